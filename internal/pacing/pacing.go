// Package pacing keeps a target's calls under the quota its answers
// describe in OpenAI's x-ratelimit-* headers: the limit, the remaining
// and the time to reset, of requests and of tokens. It mirrors the
// provider's buckets (each holds at most its limit and refills
// continuously, so that reset is the time until it is full): the last
// answer's remaining, anchored at the time its attempt was sent, plus
// what has refilled since, minus what this client has drawn since. An
// attempt that would overdraw waits until the mirror has refilled enough;
// so once the burst is spent, attempts go out spaced evenly at the refill
// rate rather than in a burst at each reset.
//
// Tokens are estimated before sending (the prompt's bytes / 4, plus
// max_tokens or else the completions seen so far) and corrected with the
// usage that comes back. A provider that sends no headers is not paced.
package pacing

import (
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmdrain/llmdrain/internal/header"
)

// Pacer is one target's pacing. A nil *Pacer paces nothing. Safe for
// concurrent use.
type Pacer struct {
	now func() time.Time

	// known is set once the target told a limit (and not unset): read on
	// every attempt, without the lock.
	known atomic.Bool

	mu         sync.Mutex
	seq        uint64 // tickets issued
	req, tok   axis
	completion float64 // the running estimate of a completion's tokens
	perByte    float64 // the running estimate of a prompt's tokens per byte
	samples    int     // usages seen, up to 10: the first are averaged
	// recent are the last draws, for what the provider may not have
	// counted yet when it answered a later one (see skew). Those within
	// skew of the last draw, at most len(recent), are the window: draws
	// winFrom to seq, of which winReq requests and winTok tokens are not
	// cancelled. Kept as running sums so that a draw costs the same
	// whatever the call rate: a scan of the window was 4 % of a call's CPU
	// at 70,000 calls a second.
	recent         [64]mark
	winFrom        uint64
	winReq, winTok int64
}

// mark is one draw: its ticket, when, and its tokens; a cancelled one
// does not count.
type mark struct {
	seq       uint64
	at        time.Time
	tok       int64
	cancelled bool
}

// skew is how far apart two attempts may be sent and still reach the
// provider in the other order (they go over different connections): the
// draws made within skew before an attempt are taken as not counted yet
// in the remaining its answer tells. It costs a margin of skew's refill.
const skew = 25 * time.Millisecond

// axis is the mirror of one of the provider's buckets.
type axis struct {
	drawn     int64 // drawn by this client, ever: requests, or estimated tokens
	limit     int   // 0: not known (no header yet, or none sent)
	remaining float64
	at        time.Time     // when the attempt whose answer told remaining was sent
	sent      int64         // drawn, that attempt included, when it was sent
	seq       uint64        // its ticket
	period    time.Duration // the time the limit refills in; kept steady
}

// initialCompletion is the completion estimate before any usage was
// seen: a paragraph.
const initialCompletion = 256

// New returns a pacer on the clock now (nil: time.Now).
func New(now func() time.Time) *Pacer {
	if now == nil {
		now = time.Now
	}
	return &Pacer{now: now, completion: initialCompletion, perByte: 0.25, winFrom: 1}
}

// Ticket is one attempt's draw, to be told about its answer.
type Ticket struct {
	seq            uint64
	at             time.Time
	sentReq, sentT int64
	tokens         int // estimated
}

// Tokens is the draw's token estimate.
func (t Ticket) Tokens() int { return t.tokens }

// Estimate returns the tokens of a request of promptBytes whose
// completion is bounded by maxTokens (0: not bounded): a prompt's bytes / 4
// and maxTokens at first, both then learnt from the usage of the answers
// (the tokens per byte of the prompts, and the completions' length when
// maxTokens is 0).
func (p *Pacer) Estimate(promptBytes, maxTokens int) int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	est := int(math.Ceil(float64(promptBytes) * p.perByte))
	if maxTokens > 0 {
		return est + maxTokens
	}
	return est + int(math.Ceil(p.completion))
}

// Reserve draws one request and tokens at now if the mirror holds them,
// and returns the ticket; else it returns how long until it would
// (nothing drawn).
func (p *Pacer) Reserve(tokens int) (Ticket, time.Duration) {
	if p == nil {
		return Ticket{}, 0
	}
	now := p.now()
	p.mu.Lock()
	defer p.mu.Unlock()
	wait := max(p.req.wait(now, 1), p.tok.wait(now, float64(tokens)))
	if wait > 0 {
		return Ticket{}, wait
	}
	// What the provider surely counted before this attempt: all but the
	// draws within skew (what the counts are now, corrections included,
	// less those draws).
	cut := now.Add(-skew)
	for p.winFrom <= p.seq && !p.recent[(p.winFrom-1)%uint64(len(p.recent))].at.After(cut) {
		p.leaveWindow()
	}
	baseReq, baseTok := p.req.drawn-p.winReq, p.tok.drawn-p.winTok
	if p.seq-p.winFrom+1 == uint64(len(p.recent)) {
		p.leaveWindow() // its place in recent is this draw's
	}
	p.recent[p.seq%uint64(len(p.recent))] = mark{seq: p.seq + 1, at: now, tok: int64(tokens)}
	p.seq++
	p.winReq++
	p.winTok += int64(tokens)
	p.req.drawn++
	p.tok.drawn += int64(tokens)
	return Ticket{seq: p.seq, at: now, sentReq: baseReq + 1, sentT: baseTok + int64(tokens), tokens: tokens}, 0
}

// leaveWindow takes the oldest draw of the window out of it.
func (p *Pacer) leaveWindow() {
	if m := &p.recent[(p.winFrom-1)%uint64(len(p.recent))]; !m.cancelled {
		p.winReq--
		p.winTok -= m.tok
	}
	p.winFrom++
}

// Known reports whether the target has told any limit.
func (p *Pacer) Known() bool {
	return p != nil && p.known.Load()
}

// Cancel gives back a draw whose attempt was not sent, or that the
// provider refused (a 429 draws nothing from its buckets).
func (p *Pacer) Cancel(t Ticket) {
	if p == nil || t.seq == 0 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.req.undo(t.seq, 1)
	p.tok.undo(t.seq, int64(t.tokens))
	if m := &p.recent[(t.seq-1)%uint64(len(p.recent))]; m.seq == t.seq && !m.cancelled {
		m.cancelled = true
		if t.seq >= p.winFrom {
			p.winReq--
			p.winTok -= m.tok
		}
	}
}

// Observe learns from the headers of the answer to t's attempt.
func (p *Pacer) Observe(t Ticket, h http.Header) {
	if p == nil || t.seq == 0 {
		return
	}
	// Read before locking, and not at all for a provider that sends no
	// headers: this runs on every answer.
	req, tok := readTold(h, requestKeys), readTold(h, tokenKeys)
	if !req.ok && !tok.ok {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.req.observe(t, t.sentReq, req)
	p.tok.observe(t, t.sentT, tok)
	p.known.Store(true)
}

// Used corrects t's estimate with the usage its answer reported: total
// tokens, of which completion, for a prompt of promptBytes. It returns the
// estimate's excess (negative when the estimate was short), for the
// caller to give back to a shared quota.
func (p *Pacer) Used(t Ticket, promptBytes, total, completion int) int {
	if p == nil || t.seq == 0 {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	// The first usages averaged, then a moving average: one answer is
	// enough to drop the guess, and the estimate follows a workload that
	// changes.
	w := 0.2
	if p.samples < 10 {
		p.samples++
		w = 1 / float64(p.samples)
	}
	p.completion += w * (float64(completion) - p.completion)
	if promptBytes > 0 {
		p.perByte += w * (float64(total-completion)/float64(promptBytes) - p.perByte)
	}
	excess := t.tokens - total
	p.tok.undo(t.seq, int64(excess))
	return excess
}

// Limit returns the limits the target told and the period they refill
// in, once it has told one.
func (p *Pacer) Limit() (requests, tokens int, period time.Duration, ok bool) {
	if !p.Known() {
		return 0, 0, 0, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.req.limit > 0:
		period = p.req.period
	case p.tok.limit > 0:
		period = p.tok.period
	default:
		return 0, 0, 0, false
	}
	tokens = p.tok.limit
	if tokens > 0 && p.tok.period != period {
		// One period for both axes: the tokens' rate over the requests'.
		tokens = int(math.Round(float64(tokens) * period.Seconds() / p.tok.period.Seconds()))
	}
	return p.req.limit, tokens, period, true
}

// undo takes n back from what was drawn by ticket seq, keeping the
// mirror's count of what was drawn since its anchor right.
func (a *axis) undo(seq uint64, n int64) {
	a.drawn -= n
	if seq <= a.seq {
		a.sent -= n // drawn before the anchor: not in the count since
	}
}

// wait returns how long until the mirror holds need at now; 0 if it does
// or knows no limit.
func (a *axis) wait(now time.Time, need float64) time.Duration {
	if a.limit <= 0 {
		return 0
	}
	rate := float64(a.limit) / a.period.Seconds()
	need = math.Min(need, float64(a.limit)) // more than the bucket: waits for it full
	// The draws since are taken before the refill: the provider's bucket
	// may have been full meanwhile and lost some refill, so this may hold
	// a little more than the provider; but a mirror that took them after
	// capping would wait for ever once they exceed the limit and no answer
	// comes to re-anchor it.
	held := math.Min(float64(a.limit), a.remaining-float64(a.drawn-a.sent)+rate*now.Sub(a.at).Seconds())
	if held >= need {
		return 0
	}
	return time.Duration(math.Ceil((need - held) / rate * float64(time.Second)))
}

// headerKeys are one axis's x-ratelimit-* header names, in canonical
// form so that reading them allocates nothing.
type headerKeys struct{ limit, remaining, reset string }

var (
	requestKeys = headerKeys{"X-Ratelimit-Limit-Requests", "X-Ratelimit-Remaining-Requests", "X-Ratelimit-Reset-Requests"}
	tokenKeys   = headerKeys{"X-Ratelimit-Limit-Tokens", "X-Ratelimit-Remaining-Tokens", "X-Ratelimit-Reset-Tokens"}
)

// told is what one answer's headers said of one axis; ok when they gave
// a positive limit and a remaining. reset is 0 when not told.
type told struct {
	limit     int
	remaining float64
	reset     time.Duration
	ok        bool
}

// readTold reads one axis's headers from h. An absent header is checked
// for before parsing, so an answer without them costs no error value.
func readTold(h http.Header, k headerKeys) told {
	l := header.Value(h, k.limit)
	if l == "" {
		return told{}
	}
	r := header.Value(h, k.remaining)
	if r == "" {
		return told{}
	}
	limit, err := strconv.Atoi(l)
	if err != nil || limit <= 0 {
		return told{}
	}
	remaining, err := strconv.ParseFloat(r, 64)
	if err != nil {
		return told{}
	}
	reset, _ := ParseReset(header.Value(h, k.reset)) // 0 if absent or unreadable
	return told{limit: limit, remaining: remaining, reset: reset, ok: true}
}

// observe takes what an answer to t's attempt told of the axis, if newer
// than the anchor.
func (a *axis) observe(t Ticket, sent int64, w told) {
	if !w.ok {
		return
	}
	limit, remaining := w.limit, w.remaining
	if limit != a.limit {
		a.limit, a.period = limit, 0
	}
	if a.period == 0 {
		a.period = time.Minute // OpenAI's and most providers'; the reset refines it
	}
	// The period from the reset, kept unless it differs by a quarter and
	// snapped to a round value, so that a shared quota sees one steady
	// limit from every client.
	if missing := float64(limit) - remaining; w.reset > 0 && missing >= 1 {
		period := time.Duration(float64(w.reset) * float64(limit) / missing)
		if d := math.Abs(float64(period-a.period)) / float64(a.period); d > 0.25 {
			a.period = snap(period)
		}
	}
	if t.seq <= a.seq {
		return // an older attempt's: the anchor knows more
	}
	a.remaining, a.at, a.sent, a.seq = remaining, t.at, sent, t.seq
}

// periods are the round values a measured period is snapped to when
// within a quarter of one.
var periods = []time.Duration{
	100 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2 * time.Second, 5 * time.Second, 10 * time.Second, 15 * time.Second, 30 * time.Second,
	time.Minute, 5 * time.Minute, 10 * time.Minute, time.Hour, 24 * time.Hour,
}

func snap(d time.Duration) time.Duration {
	best, dist := d, math.Inf(1)
	for _, p := range periods {
		if r := math.Abs(float64(d-p)) / float64(p); r <= 0.25 && r < dist {
			best, dist = p, r
		}
	}
	return best
}

// ParseReset reads an x-ratelimit-reset-* value: a Go-style duration as
// OpenAI sends it ("1s", "6m0s", "20ms", "1m30.5s"), or plain seconds.
func ParseReset(s string) (time.Duration, bool) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, false
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return d, true
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 && !math.IsInf(f, 0) {
		return time.Duration(f * float64(time.Second)), true
	}
	return 0, false
}
