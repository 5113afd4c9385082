package llmdrain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sync/semaphore"
)

// call is one request through the transport, from RoundTrip until its
// response body is done: what it holds (its place in the Tracker, a
// concurrency slot, the context and timer of its current attempt) and
// releases once, and what its attempts need (the request, its body for
// each attempt, the count, the backoff).
type call struct {
	t   *transport
	ctx context.Context // the Tracker's, derived from the request's

	// What the call holds; release gives it back, once.
	done     func()              // the Tracker's
	sem      *semaphore.Weighted // nil: no slot held
	end      func()              // ends the current attempt's context and timer
	released atomic.Bool

	req      *http.Request
	stream   bool // go-openai asked for an event stream
	jsonCall bool // go-openai asked for JSON, which it decodes whole
	body     io.ReadCloser
	getBody  func() (io.ReadCloser, error) // a fresh body for each later attempt
	attempts int
	backoff  backoff.BackOff // made on the first retry
	route    route           // the targets the call may still go to
	key      secret          // the key sent with the current attempt, for scrubbing its answer
	raw      []byte          // the request body, read once for a target with a model of its own

	// tracked is the body handed over with the response, allocated with
	// the call: it keeps the call in flight until it is done.
	tracked trackedBody
}

// begin registers req's call with the Tracker (refused with ErrDraining
// once a drain began) and takes a concurrency slot, bounded by the call's
// context. The call must be released unless it is handed over.
func (t *transport) begin(req *http.Request) (*call, error) {
	ctx, done, err := t.tracker.begin(req.Context(), t.label(req))
	if err != nil {
		closeBody(req)
		return nil, err
	}
	c := &call{t: t, ctx: ctx, done: done, end: nop, req: req}
	c.tracked.c = c
	if t.sem != nil {
		if err := t.sem.Acquire(ctx, 1); err != nil {
			closeBody(req)
			done()
			return nil, callError(ctx, err)
		}
		c.sem = t.sem
	}
	// go-openai asks for an event stream on its streaming endpoints, and
	// for JSON where it decodes the body whole.
	accept := req.Header.Get("Accept")
	c.stream = strings.Contains(accept, "text/event-stream")
	c.jsonCall = !c.stream && strings.Contains(accept, "application/json")
	if c.body, c.getBody, err = rewindable(req); err != nil {
		c.release()
		return nil, err
	}
	return c, nil
}

// release ends the current attempt, frees the concurrency slot and takes
// the call off the Tracker, once, whichever of the body's end, its Close
// or RoundTrip's own failure comes first.
func (c *call) release() {
	if c.released.Swap(true) {
		return
	}
	c.end()
	if c.sem != nil {
		c.sem.Release(1)
	}
	c.done()
}

// attempt sends the request to tg, once. A 2xx answer is not a success
// until its body has begun: for a stream, until its first byte; for a
// JSON call (go-openai reads those whole anyway), until the whole body, up
// to maxWholeBody bytes, has been read. Both within the attempt, so
// AttemptTimeout bounds them, and an error, an end or a timeout before
// then fails the attempt as a connection error would.
func (c *call) attempt(tg *target) (*http.Response, error) {
	if c.attempts > 0 && c.getBody != nil {
		body, err := c.getBody()
		if err != nil {
			return nil, fmt.Errorf("llmdrain: rewinding request body: %w", err)
		}
		c.body = body
	}
	c.attempts++
	countAttempt(c.ctx)
	actx, timer := c.attemptContext()
	resp, err := c.t.base.RoundTrip(c.prepare(actx, tg))
	silence := err != nil // no response header: a timeout then is silence
	where := ""           // the part of the exchange that failed, for a timeout
	if err == nil && resp.StatusCode/100 == 2 && (c.stream || c.jsonCall) {
		if c.stream {
			err, where = peekFirstByte(resp), " before the stream's first byte"
		} else {
			err, where = readWhole(resp), " reading the response body"
		}
		if err != nil {
			resp.Body.Close()
			resp = nil
		} else if c.stream && timer != nil {
			// The attempt timeout bounds a successful stream up to its
			// first byte only: a long generation must not be cut by it.
			// A failed stream's error body stays bounded.
			timer.Stop()
		}
	}
	if err != nil && c.ctx.Err() == nil && context.Cause(actx) == errAttemptTimeout {
		if errors.Is(err, errAttemptTimeout) { // net/http returns the cause as it is
			err = fmt.Errorf("%w after %v%s", errAttemptTimeout, c.t.attemptTimeout, where)
		} else {
			err = fmt.Errorf("%w after %v: %w", errAttemptTimeout, c.t.attemptTimeout, err)
		}
		if silence {
			err = fmt.Errorf("%w: %w", errSilent, err)
		}
	}
	return resp, err
}

// attemptContext returns the context of the next attempt and the timer of
// Config.AttemptTimeout, if any, and sets c.end to end both. Without a
// timeout the call's context serves as it is: nothing to allocate on the
// happy path.
func (c *call) attemptContext() (context.Context, *time.Timer) {
	if c.t.attemptTimeout <= 0 {
		return c.ctx, nil
	}
	actx, acancel := context.WithCancelCause(c.ctx)
	timer := time.AfterFunc(c.t.attemptTimeout, func() { acancel(errAttemptTimeout) })
	c.end = func() { timer.Stop(); acancel(context.Canceled) }
	return actx, timer
}

func nop() {}

// prepare makes the request of one attempt at tg: a shallow copy of the
// call's request with its own context, body and headers (the request itself
// must not be modified, as the http.RoundTripper contract says), moved to
// tg, with tg's key and model.
func (c *call) prepare(ctx context.Context, tg *target) *http.Request {
	areq := c.req.WithContext(ctx)
	// A new map, sharing the value slices: only Authorization is set, by
	// replacing its slice, and nothing below writes into a header's values.
	areq.Header = make(http.Header, len(c.req.Header)+1)
	for k, v := range c.req.Header {
		areq.Header[k] = v
	}
	if c.body != nil {
		areq.Body = c.body
	}
	if u, ok := c.t.router.url(c.req.URL, tg); ok {
		areq.URL = u
		areq.Host = ""
	}
	c.key = ""
	if kt := c.t.router.auth(areq.URL, tg); kt != nil && kt.bearer != "" {
		areq.Header["Authorization"] = []string{string(kt.bearer)}
		c.key = kt.key
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
		!strings.HasPrefix(c.req.Header.Get("Content-Type"), "application/json") {
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
	case ok && t.apiError != nil && !isSSE(resp) && (c.stream || c.jsonCall):
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
	if ok && (c.stream || isSSE(resp)) {
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
	// A stream request answered 2xx must end with [DONE] whatever its
	// Content-Type says: a server that ignored "stream": true or sent a
	// JSON body must not pass for a complete, empty stream.
	if ok && (isSSE(resp) || c.stream) && endsWithDone(c.req.URL.Path) {
		tb.sse = new(sseWatcher)
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

// next ends a failed attempt, to make way for another after wait: its
// response is read a little (so its connection can be reused) and closed.
func (c *call) next(resp *http.Response, wait time.Duration) error {
	discard(resp)
	c.end()
	c.end = nop
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
