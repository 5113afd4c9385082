package pacing

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func rateHeaders(limitR, remR int, resetR string, limitT, remT int, resetT string) http.Header {
	h := http.Header{}
	if limitR > 0 {
		h.Set("x-ratelimit-limit-requests", strconv.Itoa(limitR))
		h.Set("x-ratelimit-remaining-requests", strconv.Itoa(remR))
		h.Set("x-ratelimit-reset-requests", resetR)
	}
	if limitT > 0 {
		h.Set("x-ratelimit-limit-tokens", strconv.Itoa(limitT))
		h.Set("x-ratelimit-remaining-tokens", strconv.Itoa(remT))
		h.Set("x-ratelimit-reset-tokens", resetT)
	}
	return h
}

func TestParseReset(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"1s": time.Second, "6m0s": 6 * time.Minute, "20ms": 20 * time.Millisecond,
		"1m30.5s": 90500 * time.Millisecond, "0s": 0, "2": 2 * time.Second, "0.5": 500 * time.Millisecond,
	} {
		if got, ok := ParseReset(in); !ok || got != want {
			t.Errorf("ParseReset(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "soon", "-1s", "-3"} {
		if _, ok := ParseReset(in); ok {
			t.Errorf("ParseReset(%q) accepted", in)
		}
	}
}

func TestNilPacesNothing(t *testing.T) {
	var p *Pacer
	if _, w := p.Reserve(100); w != 0 {
		t.Fatal("a nil pacer held an attempt")
	}
	p.Observe(Ticket{}, nil)
	p.Cancel(Ticket{})
	if p.Used(Ticket{}, 0, 1, 1) != 0 || p.Known() {
		t.Fatal("a nil pacer knows something")
	}
}

func TestNoHeadersNoPacing(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	p := New(c.now)
	for range 1000 {
		tk, w := p.Reserve(10)
		if w != 0 {
			t.Fatal("paced without any limit known")
		}
		p.Observe(tk, http.Header{})
	}
}

func TestRequestsSpacedAtTheRefillRate(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	p := New(c.now)
	tk, _ := p.Reserve(0)
	// 60 per minute, 2 left after this one: one refills per second.
	p.Observe(tk, rateHeaders(60, 2, "58s", 0, 0, ""))
	for i := range 2 {
		if _, w := p.Reserve(0); w != 0 {
			t.Fatalf("attempt %d held with requests remaining", i+1)
		}
	}
	_, w := p.Reserve(0)
	if w <= 0 || w > time.Second {
		t.Fatalf("wait %v with the bucket empty, want up to 1s", w)
	}
	c.t = c.t.Add(w)
	if _, w := p.Reserve(0); w != 0 {
		t.Fatalf("held %v after the wait it asked for", w)
	}
	// The next one a second later, not at once: spaced evenly.
	if _, w := p.Reserve(0); w < 900*time.Millisecond {
		t.Fatalf("next wait %v, want about 1s", w)
	}
	if r, tok, period, ok := p.Limit(); !ok || r != 60 || tok != 0 || period != time.Minute {
		t.Fatalf("Limit() = %d, %d, %v, %v", r, tok, period, ok)
	}
}

func TestPeriodFromReset(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	p := New(c.now)
	tk, _ := p.Reserve(0)
	// 100 per 2 s: 50 missing refill in 1 s.
	p.Observe(tk, rateHeaders(100, 50, "1s", 0, 0, ""))
	if _, _, period, _ := p.Limit(); period != 2*time.Second {
		t.Fatalf("period %v, want 2s", period)
	}
	// A slightly different figure keeps the period steady.
	tk, _ = p.Reserve(0)
	p.Observe(tk, rateHeaders(100, 50, "1.1s", 0, 0, ""))
	if _, _, period, _ := p.Limit(); period != 2*time.Second {
		t.Fatalf("period moved to %v on a 10%% difference", period)
	}
}

func TestTokensEstimatedAndCorrected(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	p := New(c.now)
	if got := p.Estimate(400, 50); got != 150 {
		t.Fatalf("Estimate(400 bytes, max 50) = %d, want 150", got)
	}
	if got := p.Estimate(0, 0); got != initialCompletion {
		t.Fatalf("Estimate with no max_tokens = %d, want %d", got, initialCompletion)
	}
	tk, _ := p.Reserve(100)
	p.Observe(tk, rateHeaders(0, 0, "", 1000, 900, "6s")) // 1000 per minute
	a, _ := p.Reserve(400)
	b, _ := p.Reserve(400)
	if _, w := p.Reserve(400); w == 0 {
		t.Fatal("overdraw of the token bucket not held")
	}
	// a used 100, not 400: 300 more fit.
	if excess := p.Used(a, 0, 100, 50); excess != 300 {
		t.Fatalf("excess %d, want 300", excess)
	}
	if _, w := p.Reserve(300); w != 0 {
		t.Fatalf("held %v after a correction freed the tokens", w)
	}
	// An answer older than the anchor does not move it.
	p.Observe(tk, rateHeaders(0, 0, "", 1000, 0, "1m0s"))
	p.Observe(b, rateHeaders(0, 0, "", 1000, 500, "30s"))
	if got := p.Estimate(0, 0); got >= initialCompletion {
		t.Fatalf("completion estimate %d not corrected by usage", got)
	}
}

func TestCancelGivesBack(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	p := New(c.now)
	tk, _ := p.Reserve(0)
	p.Observe(tk, rateHeaders(60, 1, "59s", 0, 0, ""))
	a, w := p.Reserve(0)
	if w != 0 {
		t.Fatal("held with one remaining")
	}
	if _, w := p.Reserve(0); w == 0 {
		t.Fatal("not held with none remaining")
	}
	p.Cancel(a)
	if _, w := p.Reserve(0); w != 0 {
		t.Fatal("a cancelled draw was not given back")
	}
}

// TestSentCountsLeaveOutTheDrawsWithinSkew checks each ticket's counts of
// what the provider surely counted when it was sent (sentReq, sentT)
// against a direct count over every draw: all drawn so far, less the draws
// within skew before it (the last len(recent) at most) that were not
// cancelled. The pacer keeps those as running sums; calls arrive in
// bursts and lulls and some are cancelled, late or at once.
func TestSentCountsLeaveOutTheDrawsWithinSkew(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	p := New(c.now)
	rng := rand.New(rand.NewPCG(1, 2))
	type draw struct {
		tk        Ticket
		at        time.Time
		tok       int64
		cancelled bool
	}
	var draws []draw
	var drawnReq, drawnTok int64
	for i := range 20000 {
		switch r := rng.IntN(100); {
		case r < 60: // a burst: no time passes
		case r < 95:
			c.t = c.t.Add(time.Duration(rng.IntN(2000)) * time.Microsecond)
		default: // a lull: the window empties
			c.t = c.t.Add(time.Duration(rng.IntN(60)) * time.Millisecond)
		}
		if len(draws) > 0 && rng.IntN(10) == 0 {
			// Cancel a recent draw, sometimes one outside the window.
			d := &draws[len(draws)-1-rng.IntN(min(len(draws), 100))]
			if !d.cancelled {
				p.Cancel(d.tk)
				d.cancelled = true
				drawnReq--
				drawnTok -= d.tok
			}
		}
		tokens := rng.IntN(500)
		tk, wait := p.Reserve(tokens)
		if wait != 0 {
			t.Fatalf("draw %d held with no limit known", i)
		}
		wantReq, wantTok := drawnReq, drawnTok
		for j := len(draws) - 1; j >= 0 && j >= len(draws)-len(p.recent); j-- {
			d := draws[j]
			if !d.at.After(c.t.Add(-skew)) {
				break
			}
			if !d.cancelled {
				wantReq--
				wantTok -= d.tok
			}
		}
		if tk.sentReq != wantReq+1 || tk.sentT != wantTok+int64(tokens) {
			t.Fatalf("draw %d: sent %d requests, %d tokens; want %d, %d", i, tk.sentReq, tk.sentT, wantReq+1, wantTok+int64(tokens))
		}
		draws = append(draws, draw{tk: tk, at: c.t, tok: int64(tokens)})
		drawnReq++
		drawnTok += int64(tokens)
	}
}
