package llmdrain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"golang.org/x/sync/semaphore"
)

// errAttemptTimeout is the cause of an attempt cancelled by
// Config.AttemptTimeout; the attempt is retried like a connection error.
var errAttemptTimeout = errors.New("llmdrain: attempt timed out")

// drainLimit bounds how much of a failed response is read before retrying,
// so the connection can be reused without trusting the server's body size.
const drainLimit = 64 << 10

// transport is the http.RoundTripper under every go-openai call made through
// a Client. Per call it: registers with the Tracker (refusing with
// ErrDraining once a drain began), waits for a concurrency slot, runs the
// attempts with retries, backoff and failover, and keeps the call in flight
// until the response body is closed or read to its end.
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

	// endpoints are base URLs; requests are built against endpoints[0] and
	// rewritten to endpoints[cur].
	endpoints     []string
	failoverAfter int32
	cur           atomic.Int32 // index of the endpoint in use
	fails         atomic.Int32 // consecutive failed attempts against it
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, done, err := t.tracker.begin(req.Context(), req.Method+" "+req.URL.Path)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	release := done
	if t.sem != nil {
		if err := t.sem.Acquire(ctx, 1); err != nil {
			closeBody(req)
			done()
			return nil, callError(ctx, err)
		}
		release = func() { t.sem.Release(1); done() }
	}
	resp, finish, err := t.attempts(ctx, req)
	if err != nil {
		release()
		return nil, err
	}
	tb := &trackedBody{rc: resp.Body, ctx: ctx, release: func() { finish(); release() }}
	if resp.StatusCode/100 == 2 && isSSE(resp) && endsWithDone(req.URL.Path) {
		tb.sse = new(sseWatcher)
	}
	resp.Body = tb
	return resp, nil
}

// attempts runs the request until it succeeds, fails for good, or may not
// wait any longer. On success it returns the response and a func that ends
// the attempt's resources once the body is done.
func (t *transport) attempts(ctx context.Context, req *http.Request) (*http.Response, func(), error) {
	getBody, err := rewindable(req)
	if err != nil {
		return nil, nil, err
	}
	var bo backoff.BackOff
	stream := strings.Contains(req.Header.Get("Accept"), "text/event-stream")
	for attempt := 1; ; attempt++ {
		ep := t.cur.Load()
		areq, err := t.prepare(ctx, req, ep, getBody)
		if err != nil {
			return nil, nil, err
		}
		actx, acancel := context.WithCancelCause(ctx)
		var timer *time.Timer
		if t.attemptTimeout > 0 {
			timer = time.AfterFunc(t.attemptTimeout, func() { acancel(errAttemptTimeout) })
		}
		countAttempt(ctx)
		resp, err := t.base.RoundTrip(areq.WithContext(actx))
		if stream && timer != nil {
			// The attempt timeout bounds a stream up to its headers only:
			// a long generation must not be cut by it.
			timer.Stop()
		}
		end := func() {
			if timer != nil {
				timer.Stop()
			}
			acancel(context.Canceled)
		}
		if ctx.Err() != nil {
			// The caller gave up or the drain forced: never retried.
			discard(resp)
			end()
			return nil, nil, callError(ctx, err)
		}
		if err != nil && context.Cause(actx) == errAttemptTimeout {
			err = fmt.Errorf("%w after %v: %w", errAttemptTimeout, t.attemptTimeout, err)
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
		if why == "" && !hinted {
			if bo == nil {
				bo = t.newBackoff()
			}
			if wait = bo.NextBackOff(); wait == backoff.Stop {
				why = "backoff policy stopped"
			}
		}
		if why == "" {
			if dl, ok := t.deadline(ctx); ok && time.Now().Add(wait).After(dl) {
				why = fmt.Sprintf("a retry in %v would pass the deadline", wait.Round(time.Millisecond))
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
		return nil, nil, fmt.Errorf("%s: %w", note, err)
	}
	resp.Status = fmt.Sprintf("%s (%s)", resp.Status, note)
	return resp, end, nil
}

// prepare clones req for one attempt against endpoint ep with a fresh body.
func (t *transport) prepare(ctx context.Context, req *http.Request, ep int32, getBody func() (io.ReadCloser, error)) (*http.Request, error) {
	areq := req.Clone(ctx)
	if getBody != nil {
		body, err := getBody()
		if err != nil {
			return nil, fmt.Errorf("llmdrain: rewinding request body: %w", err)
		}
		areq.Body = body
	}
	if ep != 0 {
		if u, ok := t.rebase(req.URL, ep); ok {
			areq.URL = u
			areq.Host = ""
		}
	}
	return areq, nil
}

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

// rewindable returns a func giving a fresh copy of req's body per attempt.
// go-openai always sets GetBody; other bodies are buffered once.
func rewindable(req *http.Request) (func() (io.ReadCloser, error), error) {
	if req.Body == nil || req.Body == http.NoBody {
		return nil, nil
	}
	if req.GetBody != nil {
		closeBody(req)
		return req.GetBody, nil
	}
	b, err := io.ReadAll(req.Body)
	closeBody(req)
	if err != nil {
		return nil, fmt.Errorf("llmdrain: reading request body: %w", err)
	}
	return func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }, nil
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
// end, and turns a stream that ends without [DONE] into io.ErrUnexpectedEOF.
type trackedBody struct {
	rc      io.ReadCloser
	ctx     context.Context
	sse     *sseWatcher // nil unless a chat or completions stream
	once    sync.Once
	release func()
}

func (b *trackedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if b.sse != nil {
		b.sse.Write(p[:n])
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
	b.once.Do(b.release)
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.rc.Close()
	b.once.Do(b.release)
	return err
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
