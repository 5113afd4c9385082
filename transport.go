package llmdrain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sync/semaphore"
)

// errAttemptTimeout is the cause of an attempt cancelled by
// Config.AttemptTimeout; the attempt is retried like a connection error.
// When the retries run out it is in the call's error, which then, like
// net/http's Client.Timeout errors, matches context.DeadlineExceeded and
// reports Timeout() true: without that, a call whose every attempt timed
// out would end in an error no caller could recognise.
var errAttemptTimeout error = attemptTimeoutError{}

type attemptTimeoutError struct{}

func (attemptTimeoutError) Error() string        { return "llmdrain: attempt timed out" }
func (attemptTimeoutError) Timeout() bool        { return true }
func (attemptTimeoutError) Is(target error) bool { return target == context.DeadlineExceeded }

// drainLimit bounds how much of a failed response is read before retrying,
// so the connection can be reused without trusting the server's body size.
const drainLimit = 64 << 10

// maxErrorBody bounds the body of a failed response handed to go-openai,
// which reads it whole into memory and into its error: far above any real
// error, far below what a broken or hostile server can send.
const maxErrorBody = 1 << 20

// maxSniff bounds how much of a successful body is looked at to recognise
// an error envelope; see envelopeBody.
const maxSniff = 512

// transport is the http.RoundTripper under every go-openai call made through
// a Client. Per call it: registers with the Tracker (refusing with
// ErrDraining once a drain began), waits for a concurrency slot, runs the
// attempts with retries, backoff and failover, and keeps the call in flight
// until the response body is closed or read to its end ([DONE] for a chat
// stream).
type transport struct {
	base           http.RoundTripper
	tracker        *Tracker
	sem            *semaphore.Weighted // nil: unlimited
	maxRetries     int                 // retries after the first attempt
	newBackoff     func() backoff.BackOff
	shouldRetry    func(*http.Response, error) bool
	maxRetryAfter  time.Duration
	attemptTimeout time.Duration
	logger         *slog.Logger // nil: silent

	// key is the API key. go-openai is given none: the transport sets the
	// Authorization header itself, on attempts whose URL is at one of the
	// origins only. So the key goes nowhere the Config did not name, not
	// even on a redirect that Go's policy would let it follow (to a
	// subdomain, or to plain http on the same host), and printing the
	// go-openai client does not show it.
	key     secret
	bearer  secret   // "Bearer " + key, made once
	origins []origin // of each endpoint
	// apiError turns a 2xx response whose body is an API error envelope
	// into the error go-openai would have made of it with an error status;
	// nil if the body is no such envelope. See envelopeBody.
	apiError func(resp *http.Response, body []byte) error

	labels atomic.Pointer[map[labelKey]string] // see label

	// endpoints are base URLs; requests are built against endpoints[0] and
	// rewritten to endpoints[cur].
	endpoints     []string
	failoverAfter int32
	cur           atomic.Int32 // index of the endpoint in use
	fails         atomic.Int32 // consecutive failed attempts against it
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, done, err := t.tracker.begin(req.Context(), t.label(req))
	if err != nil {
		closeBody(req)
		return nil, err
	}
	if t.sem != nil {
		if err := t.sem.Acquire(ctx, 1); err != nil {
			closeBody(req)
			done()
			return nil, callError(ctx, err)
		}
	}
	tb := &trackedBody{ctx: ctx, done: done, sem: t.sem}
	// Until the body takes the call over, it is released on every way out,
	// a panic included: ShouldRetry, Backoff and the Logger are the
	// caller's code, and a call never released would hold every later
	// drain until its deadline.
	handedOver := false
	defer func() {
		if !handedOver {
			tb.release()
		}
	}()
	// go-openai asks for an event stream on its streaming endpoints, and
	// for JSON where it decodes the body whole.
	accept := req.Header.Get("Accept")
	stream := strings.Contains(accept, "text/event-stream")
	jsonCall := !stream && strings.Contains(accept, "application/json")
	resp, finish, err := t.attempts(ctx, req, stream, jsonCall)
	if err != nil {
		return nil, err
	}
	handedOver = true

	body := resp.Body
	ok := resp.StatusCode/100 == 2
	switch {
	case resp.StatusCode < 200 || resp.StatusCode >= 400: // go-openai's failure statuses
		body = &errorBody{rc: body, key: t.key}
	case stream && resp.StatusCode/100 == 3:
		// A redirect that reached here is one the http.Client may still
		// follow, draining and closing this body, or one it will hand
		// over (no Location, or CheckRedirect said
		// http.ErrUseLastResponse). go-openai would read the latter as a
		// stream, its page as no events, and end with a clean io.EOF.
		body = &notStreamBody{rc: body, status: resp.Status}
	case ok && t.apiError != nil && !isSSE(resp) && (stream || jsonCall):
		tb.env = envelopeBody{rc: body, resp: resp, key: t.key, apiError: t.apiError}
		body = &tb.env
	}
	if ok && t.key != "" && (stream || isSSE(resp)) {
		// go-openai reads a stream by lines, and makes an error of some:
		// the key must not be in them.
		body = newSSEScrubber(body, t.key)
	}
	tb.rc, tb.finish = body, finish
	// A stream request answered 2xx must end with [DONE] whatever its
	// Content-Type says: a server that ignored "stream": true or sent a
	// JSON body must not pass for a complete, empty stream.
	if ok && (isSSE(resp) || stream) && endsWithDone(req.URL.Path) {
		tb.sse = new(sseWatcher)
	}
	resp.Body = tb
	return resp, nil
}

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

// attempts runs the request until it succeeds, fails for good, or may not
// wait any longer. On success it returns the response and a func that ends
// the attempt's resources once the body is done.
//
// A 2xx answer is not a success until its body has begun: for a stream,
// until its first byte; for a JSON call (go-openai reads those whole
// anyway), until the whole body, up to maxWholeBody bytes, has been read.
// Both within the attempt, so AttemptTimeout bounds them, and an error,
// an end or a timeout before then fails the attempt like a connection
// error would.
func (t *transport) attempts(ctx context.Context, req *http.Request, stream, jsonCall bool) (*http.Response, func(), error) {
	body, getBody, err := rewindable(req)
	if err != nil {
		return nil, nil, err
	}
	var bo backoff.BackOff
	for attempt := 1; ; attempt++ {
		ep := t.cur.Load()
		if attempt > 1 && getBody != nil {
			if body, err = getBody(); err != nil {
				return nil, nil, fmt.Errorf("llmdrain: rewinding request body: %w", err)
			}
		}
		actx, end, timer := t.attemptContext(ctx)
		countAttempt(ctx)
		resp, err := t.base.RoundTrip(t.prepare(actx, req, ep, body))
		where := "" // the part of the exchange that failed, for a timeout
		if err == nil && resp.StatusCode/100 == 2 && (stream || jsonCall) {
			if stream {
				err, where = peekFirstByte(resp), " before the stream's first byte"
			} else {
				err, where = readWhole(resp), " reading the response body"
			}
			if err != nil {
				resp.Body.Close()
				resp = nil
			} else if stream && timer != nil {
				// The attempt timeout bounds a successful stream up to its
				// first byte only: a long generation must not be cut by
				// it. A failed stream's error body stays bounded.
				timer.Stop()
			}
		}
		if ctx.Err() != nil {
			// The caller gave up or the drain forced: never retried.
			discard(resp)
			end()
			return nil, nil, callError(ctx, err)
		}
		if err != nil && context.Cause(actx) == errAttemptTimeout {
			if errors.Is(err, errAttemptTimeout) { // net/http returns the cause as it is
				err = fmt.Errorf("%w after %v%s", errAttemptTimeout, t.attemptTimeout, where)
			} else {
				err = fmt.Errorf("%w after %v: %w", errAttemptTimeout, t.attemptTimeout, err)
			}
		}
		if !t.shouldRetry(resp, err) {
			if err != nil {
				end()
				return nil, nil, err
			}
			// The endpoint answered; whatever the status, it is alive.
			t.succeeded(ep)
			return resp, end, nil
		}
		t.failed(ep)

		// Decide whether, and how long, to wait before the next attempt.
		var (
			wait   time.Duration
			hinted bool
			why    string
		)
		if resp != nil {
			wait, hinted = retryAfter(resp.Header, time.Now())
		}
		switch {
		case attempt > t.maxRetries:
			why = "gave up"
		case hinted && wait > t.maxRetryAfter:
			why = fmt.Sprintf("server asked to retry after %v, above the %v cap", wait, t.maxRetryAfter)
		}
		if why == "" {
			// A server's hint is a floor under the backoff, not a
			// replacement: never sooner than asked, and never sooner than
			// our own jittered backoff, so that the many clients a rate
			// limiter told "20 ms" do not all come back together.
			if bo == nil {
				bo = t.newBackoff()
			}
			switch d := bo.NextBackOff(); {
			case d == backoff.Stop:
				why = "backoff policy stopped"
			case d > wait:
				wait = d
			}
		}
		if why == "" {
			if dl, ok := t.deadline(ctx); ok && time.Now().Add(wait).After(dl) {
				why = fmt.Sprintf("a retry in %v would pass the deadline", wait.Round(time.Millisecond))
				noteDeadlineCut(ctx, t.tracker)
			}
		}
		if why != "" {
			return t.giveUp(resp, err, end, attempt, why)
		}
		discard(resp)
		end()
		t.log(ctx, "llmdrain: retrying", "attempt", attempt, "wait", wait, "endpoint", t.host(ep), "reason", reason(resp, err))
		if err := sleep(ctx, wait); err != nil {
			return nil, nil, callError(ctx, err)
		}
	}
}

// giveUp returns the last outcome as the final one. A response is handed to
// go-openai untouched but for its Status, which gains the attempt count, so
// errors.As(err, &*openai.APIError) still gives the real status code.
func (t *transport) giveUp(resp *http.Response, err error, end func(), attempts int, why string) (*http.Response, func(), error) {
	note := fmt.Sprintf("llmdrain: %s after %d attempt", why, attempts)
	if attempts != 1 {
		note += "s"
	}
	if err != nil {
		end()
		return nil, nil, &RetryError{Attempts: attempts, Reason: why, Err: err}
	}
	resp.Status = fmt.Sprintf("%s (%s)", resp.Status, note)
	return resp, end, nil
}

// attemptContext returns the context of one attempt, a func that ends it
// and the timer of Config.AttemptTimeout, if any. Without a timeout the
// call's context serves as it is: nothing to allocate on the happy path.
func (t *transport) attemptContext(ctx context.Context) (context.Context, func(), *time.Timer) {
	if t.attemptTimeout <= 0 {
		return ctx, nop, nil
	}
	actx, acancel := context.WithCancelCause(ctx)
	timer := time.AfterFunc(t.attemptTimeout, func() { acancel(errAttemptTimeout) })
	return actx, func() { timer.Stop(); acancel(context.Canceled) }, timer
}

func nop() {}

// prepare makes the request of one attempt against endpoint ep: a shallow
// copy of req with its own context, body and headers (req itself must not
// be modified, as the http.RoundTripper contract says).
func (t *transport) prepare(ctx context.Context, req *http.Request, ep int32, body io.ReadCloser) *http.Request {
	areq := req.WithContext(ctx)
	// A new map, sharing the value slices: only Authorization is set, by
	// replacing its slice, and nothing below writes into a header's values.
	areq.Header = make(http.Header, len(req.Header)+1)
	for k, v := range req.Header {
		areq.Header[k] = v
	}
	if body != nil {
		areq.Body = body
	}
	if ep != 0 {
		if u, ok := t.rebase(req.URL, ep); ok {
			areq.URL = u
			areq.Host = ""
		}
	}
	if t.key != "" && t.atEndpoint(areq.URL) {
		areq.Header["Authorization"] = []string{string(t.bearer)}
	}
	return areq
}

// atEndpoint reports whether u has the scheme and host of an endpoint, the
// only places the key is sent.
func (t *transport) atEndpoint(u *url.URL) bool {
	for _, o := range t.origins {
		if strings.EqualFold(u.Scheme, o.scheme) && strings.EqualFold(u.Host, o.host) {
			return true
		}
	}
	return false
}

// origin is the scheme and host of an endpoint.
type origin struct{ scheme, host string }

// rebase moves a URL built against the primary endpoint to endpoint ep.
func (t *transport) rebase(u *url.URL, ep int32) (*url.URL, bool) {
	s := u.String()
	suffix, ok := strings.CutPrefix(s, t.endpoints[0])
	if !ok {
		return nil, false
	}
	nu, err := url.Parse(t.endpoints[ep] + suffix)
	return nu, err == nil
}

func (t *transport) succeeded(ep int32) {
	if t.cur.Load() == ep {
		t.fails.Store(0)
	}
}

// failed counts a failed attempt against ep and moves to the next endpoint
// after failoverAfter in a row. Concurrent calls may each count; only the
// first to reach the threshold moves.
func (t *transport) failed(ep int32) {
	if len(t.endpoints) < 2 || t.cur.Load() != ep {
		return
	}
	if t.fails.Add(1) < t.failoverAfter {
		return
	}
	next := (ep + 1) % int32(len(t.endpoints))
	if t.cur.CompareAndSwap(ep, next) {
		t.fails.Store(0)
		t.log(context.Background(), "llmdrain: failing over", "from", t.host(ep), "to", t.host(next))
	}
}

func (t *transport) host(ep int32) string {
	if u, err := url.Parse(t.endpoints[ep]); err == nil {
		return u.Host
	}
	return ""
}

// deadline is the earlier of the caller's deadline and the drain's.
func (t *transport) deadline(ctx context.Context) (time.Time, bool) {
	dl, ok := ctx.Deadline()
	if ddl, dok := t.tracker.drainDeadline(); dok && (!ok || ddl.Before(dl)) {
		return ddl, true
	}
	return dl, ok
}

func (t *transport) log(ctx context.Context, msg string, args ...any) {
	if t.logger != nil {
		t.logger.InfoContext(ctx, msg, args...)
	}
}

func reason(resp *http.Response, err error) string {
	if err != nil {
		return err.Error()
	}
	return resp.Status
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

// discard drains a little of a response we are not returning and closes it,
// so its connection can be reused.
func discard(resp *http.Response) {
	if resp != nil {
		_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
		resp.Body.Close()
	}
}

// maxWholeBody bounds how much of a successful JSON response is read
// within its attempt: far above any chat completion, so that such a body
// that stalls or is cut is retried. A larger body (a big batch of
// embeddings) is handed over once this much has arrived, the rest read as
// it comes.
const maxWholeBody = 8 << 20

// peekSize bounds the start of a stream read to see its first byte: what
// the first read returns, up to this.
const peekSize = 512

// maxEmptyReads bounds the reads returning neither bytes nor an error, as
// bufio does, so a broken reader cannot spin the attempt.
const maxEmptyReads = 100

// errNoFirstByte is the error of a 2xx stream whose body ended before its
// first byte: no answer was received, so the attempt failed.
var errNoFirstByte = errors.New("llmdrain: stream ended before its first byte")

// peekFirstByte waits for a stream's first bytes, so that a stream cut or
// stalled before any arrived is a failed attempt, and keeps them in front
// of the rest of resp.Body.
func peekFirstByte(resp *http.Response) error {
	head := make([]byte, peekSize)
	for range maxEmptyReads {
		n, err := resp.Body.Read(head)
		if n > 0 {
			resp.Body = &bufferedBody{b: head[:n], rc: resp.Body, tailErr: err}
			return nil
		}
		if err == io.EOF {
			return fmt.Errorf("%w: %w", errNoFirstByte, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return fmt.Errorf("%w: %w", errNoFirstByte, err)
		}
	}
	return fmt.Errorf("%w: %w", errNoFirstByte, io.ErrNoProgress)
}

// readWhole reads a successful JSON body into memory, up to maxWholeBody
// bytes, so that a body cut or stalled is a failed attempt; past the bound
// the rest is read from resp.Body as it comes. Content-Length only sizes
// the buffer: the body is read to its end, as go-openai would, whatever a
// base transport put there.
func readWhole(resp *http.Response) error {
	size := 512
	if n := resp.ContentLength; n >= 0 && n < maxWholeBody {
		size = int(n) + 1 // room to see the end without growing
	}
	b := make([]byte, 0, size)
	var err error
	for len(b) < maxWholeBody {
		if len(b) == cap(b) {
			b = slices.Grow(b, min(len(b), maxWholeBody-len(b)))
		}
		var k int
		k, err = resp.Body.Read(b[len(b):min(cap(b), maxWholeBody)])
		b = b[:len(b)+k]
		if err != nil {
			break
		}
	}
	bb := &bufferedBody{b: b, rc: resp.Body}
	switch err {
	case nil: // the bound: the rest comes from rc
	case io.EOF:
		bb.tailErr = io.EOF
	default:
		return fmt.Errorf("llmdrain: reading response body: %w", err)
	}
	resp.Body = bb
	return nil
}

// bufferedBody is a body whose start b was read ahead: b, then tailErr if
// not nil, else the rest of rc.
type bufferedBody struct {
	b       []byte
	rc      io.ReadCloser
	tailErr error
}

func (b *bufferedBody) Read(p []byte) (int, error) {
	if len(b.b) > 0 {
		n := copy(p, b.b)
		b.b = b.b[n:]
		if len(b.b) == 0 && b.tailErr != nil {
			return n, b.tailErr // an end seen at once releases the call at once
		}
		return n, nil
	}
	if b.tailErr != nil {
		return 0, b.tailErr
	}
	return b.rc.Read(p)
}

func (b *bufferedBody) Close() error { return b.rc.Close() }

// ErrNotAStream is the error, matched with errors.Is, that reading a chat
// or completion stream returns when its request was answered with a 3xx
// redirect that was not followed: a Location-less redirect, or any one
// when the HTTP client's CheckRedirect returned http.ErrUseLastResponse.
// go-openai takes every status below 400 for a success; without this the
// redirect's page would read as an empty, complete stream.
var ErrNotAStream = errors.New("llmdrain: stream request answered without a stream")

// notStreamBody is the body of a stream request answered with a 3xx: its
// first Read fails with ErrNotAStream.
type notStreamBody struct {
	rc     io.ReadCloser
	status string
}

func (b *notStreamBody) Read([]byte) (int, error) {
	return 0, fmt.Errorf("%w: %s", ErrNotAStream, b.status)
}

func (b *notStreamBody) Close() error { return b.rc.Close() }

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

func isSSE(resp *http.Response) bool {
	return strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
}

// endsWithDone reports whether a streaming endpoint terminates its stream
// with "data: [DONE]". The Responses API, for one, does not.
func endsWithDone(path string) bool {
	return strings.HasSuffix(path, "/chat/completions") || strings.HasSuffix(path, "/completions")
}

// trackedBody keeps its call in flight until it is closed or read to its
// end (for a chat or completion stream, to its [DONE] event, after which it
// reads as ended), and turns a stream that ends without [DONE] into
// io.ErrUnexpectedEOF.
type trackedBody struct {
	rc     io.ReadCloser
	ctx    context.Context
	sse    *sseWatcher // nil unless a chat or completions stream
	finish func()      // ends the last attempt; nil until it is known
	sem    *semaphore.Weighted
	done   func() // the tracker's
	// env wraps rc on a successful JSON answer; kept here, not allocated
	// on its own, as it is on the path of every plain call.
	env envelopeBody
	// released makes release run once, whichever of Read's end, Close or
	// RoundTrip's own failure comes first.
	released atomic.Bool
}

func (b *trackedBody) Read(p []byte) (int, error) {
	if b.sse != nil && b.sse.done {
		// Released at [DONE]: the rest is not the answer's, and the
		// call's context, which the connection hangs on, has ended.
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if b.sse != nil {
		b.sse.Write(p[:n])
		if b.sse.done && err == nil {
			// The answer is complete: a server that keeps the connection
			// open after it must not hold the call, its slot or a drain.
			b.release()
			return n, nil
		}
	}
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		if b.sse != nil && !b.sse.done {
			err = errTruncated
		}
	default:
		if b.ctx.Err() != nil {
			err = callError(b.ctx, err)
		}
	}
	b.release()
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.rc.Close()
	b.release()
	return err
}

// release ends the attempt, frees the concurrency slot and takes the call
// off the tracker, once.
func (b *trackedBody) release() {
	if b.released.Swap(true) {
		return
	}
	if b.finish != nil {
		b.finish()
	}
	if b.sem != nil {
		b.sem.Release(1)
	}
	b.done()
}

// errTruncated is what reading a chat stream returns when the connection
// ended before the terminating "data: [DONE]" event: without it a cut-off
// stream would look like a finished one.
var errTruncated = fmt.Errorf("llmdrain: stream ended without [DONE]: %w", io.ErrUnexpectedEOF)

// CloseIdleConnections closes the base transport's idle connections, so
// http.Client.CloseIdleConnections reaches through the retrying layer.
func (t *transport) CloseIdleConnections() {
	if c, ok := t.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// secret holds the API key; it prints as "[redacted]" with every verb.
type secret string

func (secret) Format(f fmt.State, _ rune) { io.WriteString(f, "[redacted]") }

// scrub replaces the key wherever it appears in b. A server that echoes the
// key in an error would otherwise put it into the error's text, and from
// there into logs. When b was cut short, a key cut in two at its end is
// dropped too.
func scrub(b []byte, key secret, cut bool) []byte {
	if key == "" {
		return b
	}
	b = bytes.ReplaceAll(b, []byte(key), []byte("[redacted]"))
	if cut {
		b = b[:len(b)-min(len(b), len(key)-1)]
	}
	return b
}

// readBounded reads rc to its end if that is at most limit bytes away, and
// reports whether it was not: then b holds what was read, one byte more
// than limit.
func readBounded(rc io.Reader, limit int) (b []byte, more bool, err error) {
	b, err = io.ReadAll(io.LimitReader(rc, int64(limit)+1))
	return b, len(b) > limit, err
}

// errorBody is the body of a failed response as go-openai gets it: read
// whole on first use but bounded to maxErrorBody bytes, the key scrubbed
// from its bytes and, in JSON, from the strings they decode to.
// go-openai reads error bodies with io.ReadAll, and puts them into its
// errors, so an endless body would otherwise be read into memory to its
// end. Past the bound the body ends as if it were complete.
type errorBody struct {
	rc  io.ReadCloser
	key secret
	r   io.Reader // nil until the first Read
}

func (b *errorBody) Read(p []byte) (int, error) {
	if b.r == nil {
		data, more, err := readBounded(b.rc, maxErrorBody)
		// Closed now, as go-openai does not always close an error body:
		// unread, net/http drops the connection rather than read the rest.
		b.rc.Close()
		if more {
			data = data[:maxErrorBody]
		}
		data = scrub(data, b.key, more)
		if !more {
			data = scrubJSON(data, b.key)
		}
		b.r = bytes.NewReader(data)
		if err != nil {
			b.r = io.MultiReader(b.r, errReader{err})
		}
	}
	return b.r.Read(p)
}

func (b *errorBody) Close() error { return b.rc.Close() }

// envelopeBody watches the start of a successful JSON response for the
// error envelope {"error": {...}} that some gateways send with status 200.
// go-openai would decode it into an empty response and report success (or,
// on a stream, a complete empty stream); instead the body's first Read
// returns the error built by apiError, so the call fails with an
// *openai.APIError. Anything else is passed through untouched.
//
// It is on the path of every successful call, so the common case costs
// nothing: the first Read goes straight into the caller's buffer, and a
// normal answer is told from its first bytes, without a JSON decoder.
type envelopeBody struct {
	rc       io.ReadCloser
	resp     *http.Response
	key      secret
	apiError func(*http.Response, []byte) error

	sniffed bool
	buf     []byte // read from rc but not yet returned
	tailErr error  // returned once buf is empty; nil: go on reading rc
}

func (b *envelopeBody) Read(p []byte) (int, error) {
	if !b.sniffed {
		b.sniffed = true
		n, err := b.rc.Read(p)
		if is, decided := envelopeStart(p[:n]); !is && (decided || err != nil) {
			return n, err // a normal answer, passed on as it was read
		}
		// Too short to tell, or an envelope: the slow way.
		b.sniff(append([]byte(nil), p[:n]...), err)
	}
	if len(b.buf) > 0 {
		n := copy(p, b.buf)
		b.buf = b.buf[n:]
		return n, nil
	}
	if b.tailErr != nil {
		return 0, b.tailErr
	}
	return b.rc.Read(p)
}

func (b *envelopeBody) Close() error { return b.rc.Close() }

// sniff reads on from head until it can tell an error envelope, and sets
// what the body reads as from now on.
func (b *envelopeBody) sniff(head []byte, err error) {
	is, decided := envelopeStart(head)
	for !decided && err == nil && len(head) < maxSniff {
		head = slices.Grow(head, maxSniff-len(head))
		var k int
		k, err = b.rc.Read(head[len(head):maxSniff])
		head = head[:len(head)+k]
		is, decided = envelopeStart(head)
	}
	b.buf = head
	if !is || (err != nil && err != io.EOF) {
		b.tailErr = err // nil: the rest comes from rc
		return
	}
	// An envelope begins: read it whole, if it is of an error's size.
	whole := head
	if err == nil {
		tail, more, err := readBounded(b.rc, maxErrorBody)
		whole = append(whole, tail...)
		b.buf = whole
		switch {
		case more: // too large for an error: pass it on as it is
			return
		case err != nil:
			b.tailErr = err
			return
		}
	}
	b.tailErr = io.EOF
	if aerr := b.apiError(b.resp, scrubJSON(scrub(whole, b.key, false), b.key)); aerr != nil {
		b.buf, b.tailErr = nil, aerr
	}
}

// envelopeStart reports whether a JSON document beginning with head is an
// object whose first member is "error" holding an object, and whether head
// is long enough to tell.
func envelopeStart(head []byte) (is, decided bool) {
	// A normal answer, {"id":..., is told at its first key's first letter.
	i := skipJSONSpace(head, 0)
	switch {
	case i == len(head):
		return false, false
	case head[i] != '{':
		return false, true
	}
	if i = skipJSONSpace(head, i+1); i+1 < len(head) && head[i] == '"' && head[i+1] != 'e' && head[i+1] != '\\' {
		return false, true
	}
	// Anything else, escapes included, the way encoding/json reads it.
	dec := json.NewDecoder(bytes.NewReader(head))
	for _, want := range []any{json.Delim('{'), "error", json.Delim('{')} {
		tok, err := dec.Token()
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, false
		}
		if err != nil || tok != want {
			return false, true
		}
	}
	return true, true
}

// skipJSONSpace returns the index of the first byte of b at or after i that
// is not JSON white space.
func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
