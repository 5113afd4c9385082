package llmdrain

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain/internal/aimd"
	"github.com/llmdrain/llmdrain/internal/pacing"
	"github.com/llmdrain/llmdrain/internal/retrybudget"
)

// Rate-limit defaults. The retry budget's are Finagle's RetryBudget and
// Linkerd's (percentCanRetry 0.2, minRetriesPerSec 10, over a 10 s
// window); gRPC's retry throttling (proposal A6) bounds retries the same
// way with a token bucket.
const (
	// DefaultRetryBudget is Config.RetryBudget when 0: retries per target
	// may add 20 % to its requests.
	DefaultRetryBudget = 0.2
	// DefaultMinRetriesPerSecond is Config.MinRetriesPerSecond when 0: the
	// retries per second a target's budget allows whatever the traffic, so
	// that a client making few calls still retries them.
	DefaultMinRetriesPerSecond = 10
	// DefaultAdaptiveCeiling bounds a target's adaptive concurrency limit
	// when neither Config.AdaptiveCeiling nor MaxConcurrent does.
	DefaultAdaptiveCeiling = 256
)

// ErrRetryBudget matches the error of a call whose retries the retry
// budget cut (see Config.RetryBudget): its target is failing for many
// calls at once, and this one ended with its last attempt's error rather
// than add load. The error wraps that last error too: errors.As finds the
// *openai.APIError (or *openai.RequestError) of the last answer, or the
// connection error of the last attempt.
var ErrRetryBudget = errors.New("llmdrain: retry budget spent")

// gate is what stands between a call and a target's quota: the pacing
// from its rate-limit headers, drawing from the Quota; its adaptive
// concurrency limit; and its retry budget. Each part nil is off.
type gate struct {
	pacer  *pacing.Pacer
	limit  *aimd.Limiter
	budget *retrybudget.Budget
	quota  Quota
	key    string // the target's bucket in quota: no secret in it
	base   string // the target's base URL, for the hooks
	// quotaDown is set once a Quota error was logged: a dead shared quota
	// is said once, then paced around locally.
	quotaDown *atomic.Bool
	log       func(ctx context.Context, msg string, args ...any)
}

// quotaKey names a target's bucket in a Quota: a hash of its origin and
// of its key, the same in every process, so that replicas sharing a key
// share a bucket, and no key in it.
func quotaKey(o origin, key secret) string {
	h := sha256.New()
	h.Write([]byte("llmdrain quota\x00" + o.scheme + "://" + o.host + "\x00"))
	h.Write([]byte(key))
	return "llmdrain:" + hex.EncodeToString(h.Sum(nil)[:16])
}

// draw is an attempt's draw from the gate, given back or corrected
// once its answer is in.
type draw struct {
	pace   pacing.Ticket
	lim    Limit // the Limit drawn from the Quota under; zero: none
	permit aimd.Permit
	held   bool // permit is held
}

// admit holds the call's next attempt at g until the quota has room for
// it (pacing) and the adaptive limit a place, bounded by the call's
// context. The call's tokens are estimated once a limit is known.
func (g *gate) admit(c *call) (draw, error) {
	var tk draw
	if g == nil {
		return tk, nil
	}
	var paced time.Duration // how long the attempt was held, for Hooks.Waited
	defer func() {
		if paced > 0 && c.obs != nil {
			c.obs.waited(WaitPacing, g.base, paced)
		}
	}()
	for {
		// Drawn even before a limit is known: the draw anchors what the
		// answer's headers say.
		tokens := 0
		if g.pacer.Known() {
			tokens = c.estimate(g.pacer)
		}
		pt, wait := g.pacer.Reserve(tokens)
		if wait == 0 {
			r, t, period, ok := g.pacer.Limit()
			if !ok {
				tk.pace = pt
				break
			}
			lim := Limit{Requests: r, Tokens: t, Period: period}
			if wait = g.take(c.ctx, lim, 1, tokens); wait == 0 {
				tk.pace, tk.lim = pt, lim
				break
			}
			g.pacer.Cancel(pt)
		}
		start := time.Now()
		err := sleep(c.ctx, wait)
		paced += time.Since(start)
		if err != nil {
			return tk, callError(c.ctx, err)
		}
	}
	start := time.Now()
	p, waited, err := g.limit.Acquire(c.ctx)
	if waited && c.obs != nil {
		c.obs.waited(WaitAdaptiveLimit, g.base, time.Since(start))
	}
	if err != nil {
		g.giveBack(c.ctx, &tk)
		return tk, callError(c.ctx, err)
	}
	tk.permit, tk.held = p, true
	return tk, nil
}

// budgetRequest counts a call's first attempt in the retry budget.
func (g *gate) budgetRequest() {
	if g != nil {
		g.budget.Request()
	}
}

// retry reports whether the retry budget allows a retry, counting it.
func (g *gate) retry() bool {
	return g == nil || g.budget.Retry()
}

// estimate returns the call's token estimate: its body's bytes / 4 plus
// the max_completion_tokens (or max_tokens) it names, else the pacer's
// estimate of a completion. The body is read once, from a copy.
func (c *call) estimate(p *pacing.Pacer) int {
	if c.estMade {
		return c.est
	}
	c.estMade = true
	if c.raw == nil && c.getBody != nil {
		if rc, err := c.getBody(); err == nil {
			if b, err := io.ReadAll(rc); err == nil {
				c.raw = b
			}
			rc.Close()
		}
	}
	maxTokens, ok := intAt(c.raw, `"max_completion_tokens":`)
	if !ok {
		maxTokens, _ = intAt(c.raw, `"max_tokens":`)
	}
	c.est = p.Estimate(len(c.raw), maxTokens)
	return c.est
}

// take draws from the Quota; an error there paces locally (0), said once.
func (g *gate) take(ctx context.Context, lim Limit, requests, tokens int) time.Duration {
	wait, err := g.quota.Take(ctx, g.key, lim, requests, tokens)
	if err != nil {
		if ctx.Err() == nil && g.quotaDown != nil && !g.quotaDown.Swap(true) {
			g.log(ctx, "llmdrain: quota unreachable, pacing locally", "error", err)
		}
		return 0
	}
	return wait
}

// giveBack returns an attempt's draw that the provider did not count: the
// attempt was not sent, or was answered 429.
func (g *gate) giveBack(ctx context.Context, tk *draw) {
	g.pacer.Cancel(tk.pace)
	if tk.lim != (Limit{}) {
		g.take(ctx, tk.lim, -1, -tk.pace.Tokens())
	}
	tk.pace, tk.lim = pacing.Ticket{}, Limit{}
}

// learn takes what an attempt's answer says of the quota: its headers,
// and a 429's refusal. A 429 drew nothing from the provider's buckets,
// so the mirror gives the draw back; the Quota does not: it held more
// than the provider, which the draw corrects (a shared Quota starts full
// when the provider's buckets may not be, and the Quota interface has no
// other way down).
//
// An answered attempt that was sent before the target's limit was known
// (the first wave) is charged to the Quota now: the provider
// counted it, so the Quota must too, or replicas starting together would
// each draw from a shared Quota that never saw their first attempts.
func (g *gate) learn(ctx context.Context, tk *draw, resp *http.Response) {
	if g == nil {
		return
	}
	if resp == nil {
		return
	}
	g.pacer.Observe(tk.pace, resp.Header)
	if resp.StatusCode == http.StatusTooManyRequests {
		g.pacer.Cancel(tk.pace)
		tk.pace, tk.lim = pacing.Ticket{}, Limit{}
		return
	}
	if tk.lim == (Limit{}) {
		if r, t, period, ok := g.pacer.Limit(); ok {
			// Its tokens are charged by used, from the usage, once the
			// answer is read: its draw here is 0 tokens.
			lim := Limit{Requests: r, Tokens: t, Period: period}
			if g.take(ctx, lim, 1, tk.pace.Tokens()) == 0 {
				tk.lim = lim
			}
		}
	}
}

// wantsUsage reports whether used wants the usage of answers: once the
// target has told a limit. Before, no estimate is drawn and the usage is
// not read.
func (g *gate) wantsUsage() bool {
	return g != nil && g.pacer.Known()
}

// used corrects an attempt's token estimate with the usage of its answer
// (answerUsage; nothing if unknown), for a request of promptBytes, once
// the target has told a limit (wantsUsage).
func (g *gate) used(ctx context.Context, tk *draw, promptBytes int, u Usage) {
	if !u.Known || !g.wantsUsage() {
		return
	}
	total, completion := u.InputTokens+u.OutputTokens, u.OutputTokens
	if excess := g.pacer.Used(tk.pace, promptBytes, total, completion); excess != 0 && tk.lim != (Limit{}) {
		// Given back when over-estimated; drawn, if the bucket has it,
		// when short.
		g.take(ctx, tk.lim, 0, -excess)
	}
}

// done gives back an attempt's place under the adaptive limit; overloaded
// halves the limit. Once per attempt.
func (tk *draw) done(overloaded bool) {
	if tk.held {
		tk.held = false
		tk.permit.Done(overloaded)
	}
}

// budgetError is the error of a call whose retry the budget refused: the
// last attempt's, as go-openai would have made it of a response.
func budgetError(c *call, resp *http.Response, err error) error {
	if resp != nil {
		body := io.ReadCloser(&errorBody{rc: resp.Body, key: c.key})
		for _, k := range c.t.router.otherKeys(c.key) {
			body = &errorBody{rc: body, key: k}
		}
		b, rerr := io.ReadAll(io.LimitReader(body, drainLimit))
		body.Close()
		err = responseError(resp, b, rerr)
	}
	c.end()
	return &RetryError{Attempts: c.attempts, Reason: "retry budget spent", Err: err, budget: true}
}

// responseError is the error go-openai makes of an error response whose body
// is b.
func responseError(resp *http.Response, b []byte, rerr error) error {
	if rerr != nil {
		return &openai.RequestError{HTTPStatus: resp.Status, HTTPStatusCode: resp.StatusCode, Err: rerr, Body: b}
	}
	var er openai.ErrorResponse
	if err := json.Unmarshal(b, &er); err != nil || er.Error == nil {
		return &openai.RequestError{HTTPStatus: resp.Status, HTTPStatusCode: resp.StatusCode, Err: err, Body: b}
	}
	er.Error.HTTPStatus, er.Error.HTTPStatusCode = resp.Status, resp.StatusCode
	return er.Error
}
