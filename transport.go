package llmdrain

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"github.com/llmdrain/llmdrain/internal/breaker"
	"github.com/llmdrain/llmdrain/internal/watchdog"
)

// errAttemptTimeout is the cause of an attempt cancelled by
// Config.AttemptTimeout; the attempt is retried like a connection error.
// When the retries run out it is in the call's error, which then, like
// net/http's Client.Timeout errors, matches context.DeadlineExceeded and
// reports Timeout() true: without that, a call whose every attempt timed
// out would end in an error no caller could recognise.
var errAttemptTimeout error = attemptTimeoutError{}

type attemptTimeoutError struct{}

func (attemptTimeoutError) Error() string { return "llmdrain: attempt timed out" }

func (attemptTimeoutError) Timeout() bool { return true }

func (attemptTimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// transport is the http.RoundTripper under every go-openai call made through
// a Client. Per call it: registers with the Tracker (refusing with
// ErrDraining once a drain began), waits for a concurrency slot, runs the
// attempts with retries, backoff and failover, and keeps the call in flight
// until the response body is closed or read to its end ([DONE] for a chat
// stream).
//
// It is a composition of small parts, each with one concern: the call
// (what one call holds and releases, once, and how it makes an attempt),
// the router (which target an attempt goes to, and what the targets'
// outcomes teach it), classify (what an attempt's result means) and the
// retry policy (whether and how long to wait before the next attempt).
type transport struct {
	base        http.RoundTripper
	tracker     *Tracker
	sem         *semaphore.Weighted // nil: unlimited
	router      *router
	policy      retryPolicy
	shouldRetry func(*http.Response, error) bool
	// attemptTimeout bounds one attempt; 0: only the call's context.
	attemptTimeout time.Duration
	// firstTokenTimeout bounds an attempt's wait for the first sign of an
	// answer, idleTimeout a successful stream's gaps between events; <= 0:
	// no bound. clock times both.
	firstTokenTimeout time.Duration
	idleTimeout       time.Duration
	clock             watchdog.Clock
	// firstTimers keeps first-token timers stopped in time, for later
	// attempts; see firstTimer.
	firstTimers sync.Pool
	logger      *slog.Logger // nil: silent
	// hooks are told of the calls; nil: no events, and no per-call
	// observation. A client with a budget and no Hooks has empty ones:
	// the budget needs what the observation reads (the request's model,
	// the answer's usage).
	hooks *Hooks
	cost  *costing // the prices, and the budget of Config.MaxCost
	// shareHeaders: the base transport is net/http's, which never writes
	// into a request's headers, so attempts may share theirs; see
	// target.headers.
	shareHeaders bool
	model        string // Config.Model, for the hooks

	// go-openai is given no API key: the call sets the Authorization
	// header itself, on attempts at a target's origin only (see
	// router.auth), so printing the go-openai client does not show it, and
	// scrubs what comes back of the key it sent (call.key).
	// apiError turns a 2xx response whose body is an API error envelope
	// into the error go-openai would have made of it with an error status;
	// nil if the body is no such envelope. See envelopeBody.
	apiError func(resp *http.Response, body []byte) error

	labels atomic.Pointer[map[labelKey]string] // see label
}

func (t *transport) RoundTrip(req *http.Request) (_ *http.Response, err error) {
	c, err := t.begin(req)
	if err != nil {
		return nil, err
	}
	// Until the body takes the call over, it is released on every way out,
	// a panic included: ShouldRetry, Backoff and the Logger are the
	// caller's code, and a call never released would hold every later
	// drain until its deadline. Likewise the permit of a target's breaker,
	// whose half-open place a probe never released would hold for good.
	handedOver := false
	var (
		permit  breaker.Permit
		holding bool
	)
	defer func() {
		if holding {
			permit.Cancel()
		}
		if !handedOver {
			if c.obs != nil {
				c.obs.fail(cmp.Or(err, errPanicked))
			}
			c.release()
		}
	}()
	c.obs.waitedSlot()
	var prev, expected *target // the last attempt's target, and where the logs said the next goes
	for {
		tg, p, ok := t.router.pick(&c.route)
		if !ok { // unreachable: a call with no target left ends below
			return nil, errNoTarget
		}
		if prev != nil && tg != expected {
			// The breakers changed during the wait: say where it went.
			t.warn(c.ctx, "llmdrain: failing over", "attempt", c.attempts+1, "endpoint", tg.host(), "from", prev.host())
		}
		prev = tg
		permit, holding = p, true
		resp, err := c.attempt(tg)
		o := classify(c.ctx, resp, err, t.shouldRetry)
		long := t.router.tooLong(&c.route, tg, resp, o)
		if long { // final at tg, whatever its headers say
			o = healthy
		}
		holding = false
		t.router.record(&c.route, tg, permit, o)
		if o != healthy {
			c.draw.done(o == overloaded)
		}
		switch o {
		case abandoned: // the caller gave up or the drain forced: never retried
			c.obs.attempted(c.attempts, resp, err, o, false, "")
			return nil, c.abandon(resp, err)
		case fatal:
			c.obs.attempted(c.attempts, resp, err, o, false, "")
			return nil, err
		case healthy:
			if long && t.router.moveLong(&c.route, tg) {
				c.obs.attempted(c.attempts, resp, err, o, true, "context_length")
				t.log(c.ctx, "llmdrain: too long for the target, moving to a long-context one", "attempt", c.attempts, "endpoint", tg.host())
				if err := c.next(resp, 0, ""); err != nil {
					return nil, err
				}
				continue
			}
			c.obs.attempted(c.attempts, resp, err, o, false, "")
			handedOver = true
			return c.handOver(resp), nil
		}
		if o == silent && !t.router.left(&c.route) {
			// Every target had its one wait for this call.
			c.obs.attempted(c.attempts, resp, err, o, false, "")
			resp, err = c.giveUp(resp, err, &stop{why: "no target answered in time"})
			handedOver = err == nil
			return resp, err
		}
		now := time.Now()
		wait, st := t.policy.decide(now, c.attempts, resp, &c.backoff, c.deadline())
		cut := st == nil && !tg.gate.retry() // the retry budget is spent
		why := ""
		if cut {
			why = "budget"
		}
		c.obs.attempted(c.attempts, resp, err, o, st == nil && !cut, why)
		if st != nil {
			resp, err = c.giveUp(resp, err, st)
			handedOver = err == nil
			return resp, err
		}
		if cut {
			t.log(c.ctx, "llmdrain: retry budget spent, not retrying", "attempt", c.attempts, "endpoint", tg.host(), "reason", reason(resp, err))
			return nil, budgetError(c, resp, err)
		}
		if o == silent {
			wait = 0 // the timeout was the wait; the next target is another
		}
		if expected = t.router.peek(&c.route); expected == nil {
			expected = tg
		}
		if t.logger != nil {
			why := reason(resp, err)
			if expected != tg {
				t.warn(c.ctx, "llmdrain: failing over", "attempt", c.attempts+1, "endpoint", expected.host(), "from", tg.host(), "reason", why)
			}
			t.log(c.ctx, "llmdrain: retrying", "attempt", c.attempts, "wait", wait, "endpoint", expected.host(), "from", tg.host(), "reason", why)
		}
		if err := c.next(resp, wait, waitReason(resp, wait, now)); err != nil {
			return nil, err
		}
	}
}

// waitReason says whether a wait of wait after resp is the backoff's or
// the server's: the server's when it asked for at least as long.
func waitReason(resp *http.Response, wait time.Duration, now time.Time) WaitReason {
	if resp != nil {
		if hint, ok := retryAfter(resp.Header, now); ok && hint >= wait {
			return WaitRetryAfter
		}
	}
	return WaitBackoff
}

// errPanicked is the error a call's CallDone reports when the call ended
// in a panic (in the caller's ShouldRetry, Backoff or Logger, or a hook).
var errPanicked = errors.New("llmdrain: call ended in a panic")

// errNoTarget ends a call that has no target left; RoundTrip ends such a
// call before it asks for one.
var errNoTarget = errors.New("llmdrain: no target left for the call")

// label names a call for a forced drain's report, "POST /v1/chat/completions".
// Labels are cached per method and path, in a map that is replaced, never
// written, so lookups take no lock: a client calls few endpoints, and
// building the string anew would cost an allocation per call.
func (t *transport) label(req *http.Request) string {
	key := labelKey{req.Method, req.URL.Path}
	cur := t.labels.Load()
	if cur != nil {
		if l, ok := (*cur)[key]; ok {
			return l
		}
	}
	l := req.Method + " " + req.URL.Path
	if cur == nil || len(*cur) < maxLabels {
		next := make(map[labelKey]string, 8)
		if cur != nil {
			maps.Copy(next, *cur)
		}
		next[key] = l
		t.labels.CompareAndSwap(cur, &next) // a lost race only loses a cache entry
	}
	return l
}

type labelKey struct{ method, path string }

// maxLabels bounds the label cache: paths with IDs in them (files,
// batches) must not grow it without end.
const maxLabels = 64

func (t *transport) log(ctx context.Context, msg string, args ...any) {
	if t.logger != nil {
		t.logger.InfoContext(ctx, msg, args...)
	}
}

// warn logs what is going wrong: a target out, a failover.
func (t *transport) warn(ctx context.Context, msg string, args ...any) {
	if t.logger != nil {
		t.logger.WarnContext(ctx, msg, args...)
	}
}

func reason(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
}

// CloseIdleConnections closes the base transport's idle connections, so
// http.Client.CloseIdleConnections reaches through the retrying layer.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}
