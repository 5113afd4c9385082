package llmdrain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sync/semaphore"

	"github.com/llmdrain/llmdrain/internal/header"
	"github.com/llmdrain/llmdrain/internal/watchdog"
)

// call is one request through the transport, from RoundTrip until its
// response body is done: what it holds (its place in the Tracker, a
// concurrency slot, the context and timer of its current attempt) and
// releases once, and what its attempts need (the request, its body for
// each attempt, the count, the backoff).
type call struct {
	t   *transport
	ctx context.Context // the Tracker's, derived from the request's; its attempts run in it (see renew)

	// What the call holds; release gives it back, once.
	tk       ticket              // the Tracker's, for finish
	sem      *semaphore.Weighted // nil: no slot held
	released atomic.Bool

	req      *http.Request
	stream   bool // go-openai asked for an event stream
	jsonCall bool // go-openai asked for JSON, which it decodes whole
	body     io.ReadCloser
	getBody  func() (io.ReadCloser, error) // a fresh body for each later attempt
	attempts int
	backoff  backoff.BackOff // made on the first retry
	route    route           // the targets the call may still go to
	draw     draw            // the current attempt's draw from its target's gate
	est      int             // the request's token estimate, once estMade
	estMade  bool
	key      secret // the key sent with the current attempt, for scrubbing its answer
	raw      []byte // the request body, read once for a target with a model of its own

	// The current attempt's: whether one is running (its timers may cut
	// it), its number, ctx's cancel, which they cut it with; the timers of
	// Config.AttemptTimeout and of its first sign of an answer
	// (Config.FirstTokenTimeout), nil when not running; and a stream's
	// watchdog of the gaps between its events. Kept in the call, not in
	// closures, so that an attempt allocates little.
	amu          sync.Mutex // guards live, agen and cancel between the call and its timers
	live         bool
	agen         uint64 // the current attempt's number, so a late timer ends no later attempt
	cancel       context.CancelCauseFunc
	attemptTimer watchdog.Timer
	firstMu      sync.Mutex // the request body is read on net/http's goroutine
	firstTimer   *firstTimer
	wd           *watchdog.Watchdog

	// tracked is the body handed over with the response, allocated with
	// the call: it keeps the call in flight until it is done. whole is the
	// body of a JSON answer read whole (readWhole), which tracked then
	// reads: only the last attempt's is handed over, an earlier one's
	// closed and dropped first.
	tracked trackedBody
	whole   bufferedBody

	// obs observes the call for Config.Hooks; nil without them.
	obs *callObs
}

// begin registers req's call with the Tracker (refused with ErrDraining
// once a drain began) and takes a concurrency slot, bounded by the call's
// context. The call must be released unless it is handed over.
func (t *transport) begin(req *http.Request) (*call, error) {
	c := &call{t: t, req: req}
	// go-openai asks for an event stream on its streaming endpoints, and
	// for JSON where it decodes the body whole.
	accept := header.Value(req.Header, "Accept")
	c.stream = strings.Contains(accept, "text/event-stream")
	c.jsonCall = !c.stream && strings.Contains(accept, "application/json")
	if t.hooks != nil {
		c.observe()
	}
	ctx, cancel, tk, err := t.tracker.begin(c.req.Context(), t.label(c.req))
	if err != nil {
		closeBody(c.req)
		if c.obs != nil {
			c.obs.fail(err)
			c.obs.done(0)
		}
		return nil, err
	}
	c.ctx, c.cancel, c.tk = ctx, cancel, tk
	c.tracked.c = c
	if r := callRecordOf(ctx); r != nil {
		// A call that goes on from earlier ones (Chat's retries of a whole
		// answer) counts their attempts against MaxRetries too.
		c.attempts = int(r.attempts.Load())
	}
	if t.sem != nil {
		if err := c.acquire(); err != nil {
			closeBody(c.req)
			err = callError(ctx, err)
			defer t.tracker.finish(tk) // after CallDone, even if a hook panics
			if c.obs != nil {
				c.obs.waitedSlot()
				c.obs.fail(err)
				c.obs.done(0)
			}
			return nil, err
		}
		c.sem = t.sem
	}
	if err := c.reserve(); err != nil {
		closeBody(c.req)
		c.obs.fail(err)
		c.release()
		return nil, err
	}
	if c.body, c.getBody, err = rewindable(c.req); err != nil {
		c.release()
		return nil, err
	}
	return c, nil
}

// acquire takes a concurrency slot, bounded by the call's context. With
// Hooks, a call that has to wait for one notes how long, for Waited, told
// where a panicking hook cannot leave the call held.
func (c *call) acquire() error {
	sem := c.t.sem
	if c.obs == nil {
		return sem.Acquire(c.ctx, 1)
	}
	if sem.TryAcquire(1) {
		return nil
	}
	start := time.Now()
	err := sem.Acquire(c.ctx, 1)
	c.obs.slotWait = max(time.Since(start), 1)
	return err
}

// observe starts the observation of the call for Config.Hooks: what it
// asks for, read from its body, and, for a streaming chat completion, a
// body that asks for the usage event as well; then CallStart.
func (c *call) observe() {
	req := c.req
	c.obs = newCallObs(c.t.hooks, req, c.stream, c.t.router.targets[0].base)
	c.obs.cost = c.t.cost
	c.obs.free = req.Method == http.MethodGet || req.Method == http.MethodHead || req.Method == http.MethodDelete
	if req.Method == http.MethodPost && req.GetBody != nil && strings.HasPrefix(header.Value(req.Header, "Content-Type"), "application/json") {
		if rc, err := req.GetBody(); err == nil {
			raw, err := readBody(rc, req.ContentLength)
			rc.Close()
			if err == nil && raw != nil {
				c.raw = raw // for withModel too: read once
				c.obs.info.Model = requestModel(raw, c.t.model)
			}
		}
	}
	if c.raw != nil && c.stream && strings.HasSuffix(req.URL.Path, "/chat/completions") {
		if body := includeUsage(c.raw); body != nil {
			// A copy of the request, as a RoundTripper must not change
			// it; its body, replaced, is closed.
			r := req.WithContext(req.Context())
			r.ContentLength = int64(len(body))
			r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
			r.Body, _ = r.GetBody()
			closeBody(req)
			c.req, c.raw, c.obs.injected = r, body, true
		}
	}
	c.obs.started()
}

// reserve reserves the call's worst-case cost in the client's budget
// (Config.MaxCost), if it has one and the call is priced by the token (a
// chat or text completion, embeddings), unless its caller did (see
// callRecord.reserved). The call's release settles it. It fails at once,
// with an error matching ErrBudgetExceeded, when the call does not fit in
// what is neither spent nor reserved, or its cost cannot be bounded. It
// does not wait for the calls in flight to settle: one of them may be a
// stream the same caller holds open, and would wait for itself.
func (c *call) reserve() error {
	b, o := c.t.cost.budget, c.obs
	if b == nil || o == nil { // o is nil only without a budget
		return nil
	}
	if r := callRecordOf(c.ctx); r != nil && r.reserved {
		return nil
	}
	switch o.info.Operation {
	case OpChat, OpTextCompletion, OpEmbeddings:
	default:
		return nil
	}
	bd, ok := requestBound(o.info.Operation, c.raw)
	if !ok {
		return fmt.Errorf("%w: a %s request whose body is no JSON request, its cost cannot be bounded", ErrBudgetExceeded, o.info.Operation)
	}
	worst, err := c.t.cost.worst(bd)
	if err != nil {
		return err
	}
	if err := b.TryReserve(int64(worst)); err != nil {
		return fmt.Errorf("%w: the call could cost up to $%.6f, and $%.6f of the client's $%.6f is spent or reserved by calls in flight",
			ErrBudgetExceeded, worst.usd(), pico(b.Spent()).usd(), pico(b.Max()).usd())
	}
	o.reserved, o.budgeted = worst, true
	return nil
}

// readBody reads rc whole, in one allocation when n, its length, is known.
func readBody(rc io.Reader, n int64) ([]byte, error) {
	if n < 0 || n > maxWholeBody {
		return io.ReadAll(rc)
	}
	b := make([]byte, n+1) // room to see the end
	k, err := io.ReadFull(rc, b)
	switch err {
	case io.ErrUnexpectedEOF, io.EOF:
		return b[:k], nil
	case nil: // longer than said
		rest, err := io.ReadAll(rc)
		return append(b, rest...), err
	}
	return nil, err
}

// release ends the current attempt, frees the concurrency slot and takes
// the call off the Tracker, once, whichever of the body's end, its Close
// or RoundTrip's own failure comes first. CallDone is told first, so a
// drain waiting for the call ends after it.
func (c *call) release() {
	if c.released.Swap(true) {
		return
	}
	if c.obs != nil {
		defer c.free() // even if CallDone panics
		c.obs.done(c.attempts)
		return
	}
	c.free()
}

// free is what release gives back.
func (c *call) free() {
	c.end()
	if c.sem != nil {
		c.sem.Release(1)
	}
	c.t.tracker.finish(c.tk)
}

// attempt sends the request to tg, once. A 2xx answer is not a success
// until its body has begun: for a stream, until its first event; for a
// JSON call (go-openai reads those whole anyway), until the whole body, up
// to maxWholeBody bytes, has been read. Both within the attempt, so
// AttemptTimeout bounds them, and an error, an end or a timeout before
// then fails the attempt as a connection error would.
//
// FirstTokenTimeout bounds the wait for the first sign of an answer: the
// response headers, or a 2xx stream's first event. An attempt that sees
// none in time, or whose AttemptTimeout passes before one, fails with an
// error matching errSilent: its target said nothing.
func (c *call) attempt(tg *target) (*http.Response, error) {
	if c.attempts > 0 && c.getBody != nil {
		body, err := c.getBody()
		if err != nil {
			return nil, fmt.Errorf("llmdrain: rewinding request body: %w", err)
		}
		c.body = body
	}
	if c.attempts == 0 {
		tg.gate.budgetRequest()
	}
	d, err := tg.gate.admit(c)
	if err != nil {
		return nil, err
	}
	c.draw = d
	c.attempts++
	countAttempt(c.ctx)
	if c.obs != nil {
		c.obs.target, c.obs.attemptStart = tg.base, time.Now()
	}
	c.startAttempt()
	resp, err := c.t.base.RoundTrip(c.prepare(c.ctx, tg))
	// The quota is told with the caller's context: a timeout that cut
	// this attempt has cancelled the call's.
	tg.gate.learn(c.req.Context(), &c.draw, resp)
	where := wherePhase(waitHeaders) // the part of the exchange that failed, for a timeout
	if err == nil {
		switch ok := resp.StatusCode/100 == 2; {
		case ok && c.stream:
			where = waitFirstEvent
			if err = peekFirstEvent(resp); err == nil {
				err = c.answered(true)
			}
			if err == nil && c.obs != nil {
				c.obs.ttft = time.Since(c.obs.start)
			}
			if err == nil && c.attemptTimer != nil {
				// The attempt timeout bounds a successful stream up to its
				// first event only: a long generation must not be cut by
				// it. A failed stream's error body stays bounded.
				c.attemptTimer.Stop()
			}
		default:
			// The headers are the first sign of any other answer: what
			// follows is bounded by AttemptTimeout only.
			if err = c.answered(false); err == nil && ok && c.jsonCall {
				where = readingBody
				if err = readWhole(resp, &c.whole); err == nil {
					// All of the answer is in: nothing left for the
					// attempt's timeout to bound, nor to cut it after.
					c.stopAttemptTimer()
					// The usage is read once, for the hooks and the pacing.
					var u Usage
					if c.obs != nil {
						u, _ = c.obs.readAnswer(c.whole.b)
					} else if tg.gate.wantsUsage() {
						u, _ = answerUsage(c.whole.b)
					}
					tg.gate.used(c.req.Context(), &c.draw, int(c.req.ContentLength), u)
				}
			}
		}
		if err != nil {
			resp.Body.Close()
			resp = nil
		}
	}
	cause := context.Cause(c.ctx) // nil unless cancelled
	cut := attemptCut(cause)
	if cut && err == nil && resp.StatusCode/100 != 2 {
		// Cut by its own timeout as its failure came in: a failure all the
		// same, but said to be the timeout's. (A successful answer cut
		// after it began is handed over: its body ends with the cut.)
		discard(resp)
		resp, err = nil, cause
	}
	if err != nil && (cause == nil || cut) {
		switch {
		case errors.Is(err, errFirstTokenTimeout) || cause == errFirstTokenTimeout:
			err = newTimeoutError(errFirstTokenTimeout, c.t.firstTokenTimeout, where, err)
		case cause == errAttemptTimeout:
			err = newTimeoutError(errAttemptTimeout, c.t.attemptTimeout, where, err)
		}
	}
	if cut && err != nil {
		c.renew()
	}
	return resp, err
}

// attemptCut reports whether cause, the call's context's, is one that
// ends an attempt only: its timeouts or a stalled stream's watchdog.
func attemptCut(cause error) bool {
	return cause == errAttemptTimeout || cause == errFirstTokenTimeout || cause == ErrStreamStalled
}

// renew gives the call a new context, in place of the one a timeout of
// its attempt cancelled, for what comes after: the wait and the next
// attempt. The Tracker registers it, so a forced drain reaches the call
// through it (at once, if one already named the call). One context serves
// every attempt until a timeout cuts one: on the happy path a call makes
// one, not two.
func (c *call) renew() {
	ctx, cancel := context.WithCancelCause(c.req.Context())
	c.amu.Lock()
	c.live = false // a late timer of the cut attempt must not end the call
	c.ctx, c.cancel = ctx, cancel
	c.amu.Unlock()
	c.t.tracker.renew(c.tk, ctx, cancel)
}

// answered stops the wait for the first sign of an answer, which has come:
// for a successful stream, a watchdog then watches the gaps between its
// events (Config.StreamIdleTimeout). It returns errFirstTokenTimeout if the
// wait had timed out already.
func (c *call) answered(stream bool) error {
	if !c.stopFirstTimer() {
		return errFirstTokenTimeout
	}
	if idle := c.t.idleTimeout; stream && idle > 0 {
		c.wd = watchdog.Start(c.t.clock, idle, c.stalled)
	}
	return nil
}

// stalled ends the stream of the call's attempt, for a gap between events
// longer than Config.StreamIdleTimeout: a blocked read of its body returns,
// and the body reports ErrStreamStalled. It declines while the stream is
// not being read: the silence is then the reader's (a caller busy between
// two Recv), and the events it has not read yet may be waiting.
func (c *call) stalled() bool {
	if !c.tracked.reading.Load() {
		return false
	}
	c.cancelAttempt(ErrStreamStalled)
	return true
}

// startAttempt starts the timers of the next attempt, which runs in the
// call's context: those of Config.AttemptTimeout and of its first sign of
// an answer (Config.FirstTokenTimeout), if any. A timer that fires cuts
// the attempt by cancelling the context with its cause (attemptCut); the
// call then goes on in a new one (renew). end stops them.
//
// A context of its own per attempt, beside or under the call's, would
// cost every call two allocations more, and under the call's three, for
// what few attempts need: most end before any timeout.
func (c *call) startAttempt() {
	t := c.t
	c.amu.Lock()
	c.live = true
	c.agen++
	gen := c.agen
	c.amu.Unlock()
	if t.attemptTimeout > 0 {
		// The timers' functions name their attempt: one that fires as
		// end stops it may run after the next attempt has begun.
		c.attemptTimer = t.clock.AfterFunc(t.attemptTimeout, func() { c.cancelAttemptGen(gen, errAttemptTimeout) })
	}
	if t.firstTokenTimeout > 0 {
		c.firstMu.Lock()
		c.firstTimer = t.startFirstTimer(c, gen)
		c.firstMu.Unlock()
		if c.body != nil && (c.req.ContentLength < 0 || c.req.ContentLength > sentAtOnce) {
			// Counted from the request's last byte: a slow upload is
			// progress, not silence. One per attempt: net/http may still
			// be closing the last attempt's body. A small body is not
			// wrapped: net/http sends the headers and an in-memory body
			// (go-openai's) in one write, and one of a type it does not
			// know in two, which costs a round of system calls on both
			// ends of every call.
			c.body = &progressBody{ReadCloser: c.body, c: c}
		}
	}
}

// stopAttemptTimer stops the timer of Config.AttemptTimeout, if running.
func (c *call) stopAttemptTimer() {
	if c.attemptTimer != nil {
		c.attemptTimer.Stop()
		c.attemptTimer = nil
	}
}

// stopFirstTimer ends the wait for the first sign of an answer, and
// reports false if it had timed out already.
func (c *call) stopFirstTimer() bool {
	c.firstMu.Lock()
	defer c.firstMu.Unlock()
	if c.firstTimer == nil {
		return true
	}
	ft := c.firstTimer
	c.firstTimer = nil
	stopped := ft.t.Stop()
	if stopped {
		// Stopped before it fired: its func will not run, and the timer
		// can serve another attempt.
		ft.c.Store(nil)
		c.t.firstTimers.Put(ft)
	}
	return stopped
}

// firstTimer is the timer of an attempt's wait for the first sign of an
// answer. Every attempt has one by default (Config.FirstTokenTimeout),
// and nearly every one is stopped in time, so the transport keeps those
// for later attempts (transport.firstTimers): a timer and its func made
// anew would cost each attempt two allocations. Its func reads the
// attempt it ends from c and gen, set before the timer is (re)started.
type firstTimer struct {
	t   watchdog.Timer
	c   atomic.Pointer[call] // nil while kept for later
	gen atomic.Uint64
}

func (ft *firstTimer) fire() {
	if c := ft.c.Load(); c != nil {
		c.cancelAttemptGen(ft.gen.Load(), errFirstTokenTimeout)
	}
}

// startFirstTimer starts the first-token timer of attempt gen of c: a
// kept one if there is one, else a new one.
func (t *transport) startFirstTimer(c *call, gen uint64) *firstTimer {
	ft, _ := t.firstTimers.Get().(*firstTimer)
	if ft != nil {
		ft.c.Store(c)
		ft.gen.Store(gen)
		ft.t.Reset(t.firstTokenTimeout)
		return ft
	}
	ft = &firstTimer{}
	ft.c.Store(c)
	ft.gen.Store(gen)
	ft.t = t.clock.AfterFunc(t.firstTokenTimeout, ft.fire)
	return ft
}

// cancelAttempt ends the current attempt, if one is running, with cause
// (a watchdog's): it cancels the call's context, which the attempt runs
// in; see renew.
func (c *call) cancelAttempt(cause error) {
	c.amu.Lock()
	defer c.amu.Unlock()
	if c.live {
		c.cancel(cause)
	}
}

// cancelAttemptGen ends attempt gen with cause (a timer's) if it is still
// running.
func (c *call) cancelAttemptGen(gen uint64, cause error) {
	c.amu.Lock()
	defer c.amu.Unlock()
	if c.live && c.agen == gen {
		c.cancel(cause)
	}
}

// end ends the current attempt: its timers, its watchdog, its place
// under its target's adaptive limit. The call's context stays: the call
// may go on; the Tracker cancels it when the call is done.
func (c *call) end() {
	c.draw.done(false)
	c.amu.Lock()
	c.live = false
	c.amu.Unlock()
	c.stopAttemptTimer()
	c.stopFirstTimer()
	c.wd.Stop()
	c.wd = nil
}

// sentAtOnce is the largest request body whose sending does not count as
// progress towards an answer: it takes a moment on any link.
const sentAtOnce = 1 << 20

// progressBody is a request body whose reads push back the wait for the
// first sign of an answer.
type progressBody struct {
	io.ReadCloser
	c *call
}

func (b *progressBody) Read(p []byte) (int, error) {
	b.c.firstMu.Lock()
	if ft := b.c.firstTimer; ft != nil {
		ft.t.Reset(b.c.t.firstTokenTimeout)
	}
	b.c.firstMu.Unlock()
	return b.ReadCloser.Read(p)
}

// The part of an attempt that a timeout cut.
type wherePhase string

const (
	waitHeaders    wherePhase = " before the response headers"
	waitFirstEvent wherePhase = " before the stream's first event"
	readingBody    wherePhase = " reading the response body"
)

// errFirstTokenTimeout is the cause of an attempt cancelled by
// Config.FirstTokenTimeout. Like errAttemptTimeout it matches
// context.DeadlineExceeded and reports Timeout() true. Whether the
// attempt was silent (errSilent) depends on where it was cut; see
// timeoutError.
var errFirstTokenTimeout error = firstTokenTimeoutError{}

type firstTokenTimeoutError struct{}

func (firstTokenTimeoutError) Error() string { return "llmdrain: no first token in time" }

func (firstTokenTimeoutError) Timeout() bool { return true }

func (firstTokenTimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// timeoutError is the error of an attempt cut by one of its timeouts
// (errAttemptTimeout or errFirstTokenTimeout), saying after how long and
// where. It matches errSilent when nothing at all had come back, and
// wraps the error the cut made, unless that is the timeout itself.
type timeoutError struct {
	timeout error
	after   time.Duration
	where   wherePhase
	err     error // nil: the timeout as net/http returned it
}

func newTimeoutError(timeout error, after time.Duration, where wherePhase, err error) error {
	e := &timeoutError{timeout: timeout, after: after, where: where}
	if !errors.Is(err, timeout) {
		e.err = err
	}
	return e
}

func (e *timeoutError) Error() string {
	s := fmt.Sprintf("%v after %v%s", e.timeout, e.after, e.where)
	if e.err != nil {
		s += ": " + e.err.Error()
	}
	return s
}

func (e *timeoutError) Timeout() bool { return true }

func (e *timeoutError) Unwrap() []error {
	errs := []error{e.timeout}
	if e.where == waitHeaders {
		// Nothing at all came back: the target is silent, and one wait
		// for it is enough. A stream whose headers came but no event
		// is retried like any broken attempt.
		errs = append(errs, errSilent)
	}
	if e.err != nil {
		errs = append(errs, e.err)
	}
	return errs
}

// prepare makes the request of one attempt at tg: a shallow copy of the
// call's request with its own context, body and headers (the request itself
// must not be modified, as the http.RoundTripper contract says), moved to
// tg, with tg's key and model.
func (c *call) prepare(ctx context.Context, tg *target) *http.Request {
	areq := c.req.WithContext(ctx)
	if c.body != nil {
		areq.Body = c.body
	}
	if u, ok := c.t.router.url(c.req.URL, tg); ok {
		areq.URL = u
		areq.Host = ""
	}
	c.key = ""
	if kt := c.t.router.auth(areq.URL, tg); kt != nil && kt.bearer != "" {
		// The request's headers and kt's key, in a map of their own (see
		// target.headers).
		areq.Header = kt.headers(c.req.Header, c.t.shareHeaders)
		c.key = kt.key
	} else {
		// A new map all the same, as the request itself must not be
		// modified, without credentials (see withoutCredentials).
		areq.Header = withoutCredentials(c.req.Header, 0)
	}
	if tg.model != "" {
		c.withModel(areq, tg.model)
	}
	return areq
}

// withModel gives areq, a request of the call, a body whose model is
// model, if it is a chat or text completion request in JSON that names
// another. The call's body is read once, from a copy, for the first such
// attempt.
func (c *call) withModel(areq *http.Request, model string) {
	if c.req.Method != http.MethodPost || c.getBody == nil ||
		!(strings.HasSuffix(c.req.URL.Path, "/chat/completions") || strings.HasSuffix(c.req.URL.Path, "/completions")) ||
		!strings.HasPrefix(header.Value(c.req.Header, "Content-Type"), "application/json") {
		return
	}
	if c.raw == nil {
		rc, err := c.getBody()
		if err != nil {
			return
		}
		c.raw, err = io.ReadAll(rc)
		rc.Close()
		if err != nil || c.raw == nil {
			c.raw = nil
			return
		}
	}
	body := setModel(c.raw, model, true)
	if body == nil {
		return // the model it names already, or no JSON object
	}
	if c.body != nil {
		c.body.Close()
	}
	areq.ContentLength = int64(len(body))
	areq.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	areq.Body, _ = areq.GetBody()
	c.body = areq.Body
}

// handOver gives go-openai the response of the call's final attempt, its
// body wrapped so that the call is released when the body is done, and
// what go-openai would misread turned into errors it will report. The
// key sent is scrubbed from what go-openai may quote, and so are the
// other targets' keys, should a server know one.
func (c *call) handOver(resp *http.Response) *http.Response {
	t, tb := c.t, &c.tracked
	others := t.router.otherKeys(c.key)
	body := resp.Body
	ok := resp.StatusCode/100 == 2
	sse := isSSE(resp)
	if c.obs != nil {
		c.obs.status = resp.StatusCode
		if ok && (c.stream || sse) {
			body = &usageBody{rc: body, o: c.obs, strip: c.obs.injected}
		}
	}
	switch {
	case resp.StatusCode < 200 || resp.StatusCode >= 400: // go-openai's failure statuses
		body = &errorBody{rc: body, key: c.key}
		for _, k := range others {
			body = &errorBody{rc: body, key: k}
		}
	case c.stream && resp.StatusCode/100 == 3:
		// A redirect that reached here is one the http.Client may still
		// follow, draining and closing this body, or one it will hand
		// over (no Location, or CheckRedirect said
		// http.ErrUseLastResponse). go-openai would read the latter as a
		// stream, its page as no events, and end with a clean io.EOF.
		body = &notStreamBody{rc: body, status: resp.Status}
	case ok && t.apiError != nil && !sse && (c.stream || c.jsonCall):
		apiError := t.apiError
		if len(others) > 0 {
			apiError = func(resp *http.Response, b []byte) error {
				for _, k := range others {
					b = scrubJSON(scrub(b, k, false), k)
				}
				return t.apiError(resp, b)
			}
		}
		tb.env = envelopeBody{rc: body, resp: resp, key: c.key, apiError: apiError}
		body = &tb.env
	}
	if ok && (c.stream || sse) {
		// go-openai reads a stream by lines, and makes an error of some:
		// the key must not be in them.
		if c.key != "" {
			body = newSSEScrubber(body, c.key)
		}
		for _, k := range others {
			body = newSSEScrubber(body, k)
		}
	}
	tb.rc = body
	// A chat stream request answered 2xx must end with [DONE] (or after a
	// finish_reason) whatever its Content-Type says: a server that ignored
	// "stream": true or sent a JSON body must not pass for a complete,
	// empty stream.
	// A successful stream is watched: its events kick the idle watchdog.
	if ok && (sse || c.stream) {
		tb.sse = &sseWatcher{mustEnd: endsWithDone(c.req.URL.Path), wd: c.wd}
	}
	resp.Body = tb
	return resp
}

// giveUp ends the call with its last attempt's outcome, for the reason st.
// A response is handed over untouched but for its Status, which gains the
// attempt count, so errors.As(err, &*openai.APIError) still gives the real
// status code; an attempt without one ends in a *RetryError.
func (c *call) giveUp(resp *http.Response, err error, st *stop) (*http.Response, error) {
	if st.deadline {
		noteDeadlineCut(c.ctx, c.t.tracker)
	}
	if err != nil {
		c.end()
		return nil, &RetryError{Attempts: c.attempts, Reason: st.why, Err: err}
	}
	note := fmt.Sprintf("llmdrain: %s after %d attempt", st.why, c.attempts)
	if c.attempts != 1 {
		note += "s"
	}
	resp.Status = fmt.Sprintf("%s (%s)", resp.Status, note)
	return c.handOver(resp), nil
}

// abandon ends a call whose context ended: the caller gave up, or a
// forced drain cancelled it. Nothing of the attempt is kept.
func (c *call) abandon(resp *http.Response, err error) error {
	discard(resp)
	c.end()
	return callError(c.ctx, err)
}

// next ends a failed attempt, to make way for another after wait (for
// reason why): its response is read a little (so its connection can be
// reused) and closed.
func (c *call) next(resp *http.Response, wait time.Duration, why WaitReason) error {
	discard(resp)
	c.end()
	if attemptCut(context.Cause(c.ctx)) {
		// Its timeout cut the attempt while its answer was read here.
		c.renew()
	}
	var start time.Time
	if c.obs != nil && wait > 0 {
		start = time.Now()
		defer func() { c.obs.waited(why, c.obs.target, time.Since(start)) }()
	}
	if err := sleep(c.ctx, wait); err != nil {
		return callError(c.ctx, err)
	}
	return nil
}

// deadline is the earlier of the caller's deadline and the drain's; zero
// when neither has one.
func (c *call) deadline() time.Time {
	dl, _ := c.ctx.Deadline()
	if ddl, ok := c.t.tracker.drainDeadline(); ok && (dl.IsZero() || ddl.Before(dl)) {
		return ddl
	}
	return dl
}

// callError turns the error of a call whose context ended into one that
// says why: errors.Is matches the context's cause (ErrForcedShutdown when a
// drain forced it) and its error (context.Canceled or DeadlineExceeded).
func callError(ctx context.Context, err error) error {
	if err == nil {
		err = ctx.Err()
	}
	if cause := context.Cause(ctx); cause != nil && !errors.Is(err, cause) {
		err = fmt.Errorf("%w: %w", cause, err)
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
		err = fmt.Errorf("%w (%w)", err, cerr)
	}
	return err
}

// rewindable returns the body of the first attempt and a func giving a
// fresh copy of it for each later one. go-openai always sets GetBody;
// other bodies are buffered once.
func rewindable(req *http.Request) (io.ReadCloser, func() (io.ReadCloser, error), error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil, nil
	}
	if req.GetBody != nil {
		return req.Body, req.GetBody, nil
	}
	b, err := io.ReadAll(req.Body)
	closeBody(req)
	if err != nil {
		return nil, nil, fmt.Errorf("llmdrain: reading request body: %w", err)
	}
	getBody := func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }
	body, _ := getBody()
	return body, getBody, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		req.Body.Close()
	}
}

// sleep waits d unless ctx ends first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
