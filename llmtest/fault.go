package llmtest

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

type faultKind int

const (
	kindOK faultKind = iota // the zero Fault succeeds
	kindDelay
	kindStatus
	kindReset
	kindHang
	kindTruncate
	kindFirstTokenDelay
	kindStall
	kindMalformed
	kindNoDone
)

// truncateHalf is the chunk count chaos uses: cut the stream after half of its
// content chunks, whatever the reply length turns out to be.
const truncateHalf = -1

// Fault is one scripted misbehaviour of the server, applied to a single chat
// completion request. Build it with the constructors (OK, Status,
// RateLimited, RateLimitedMS, Reset, Hang, Truncate, Delay) and refine it with
// WithHeader and WithBody. Fault is a value: refining returns a copy and
// never changes the original. The zero Fault is OK().
type Fault struct {
	kind      faultKind
	status    int
	delay     time.Duration // before the response (Delay), or its first event (FirstTokenDelay)
	chunks    int           // content events before a Truncate or Stall; the event Malformed breaks
	keepAlive time.Duration // comment lines during a Stall; 0: none
	header    http.Header
	body      string
	hasBody   bool
	code      string // the error's "code" (WithCode); empty: the status's usual one
	immediate bool   // answered without the server's latency: a gate's (SetDown, WithRateLimit)
}

// OK is a normal successful response. It exists to interleave successes with
// faults in a script.
func OK() Fault { return Fault{} }

// Status answers with the given HTTP status code and an OpenAI-format JSON
// error body, {"error":{"message":...,"type":...,"code":...}}, whose type and
// code follow what OpenAI sends for that status. Status panics if code is not
// a valid HTTP status (100-999), as http.ResponseWriter.WriteHeader would.
func Status(code int) Fault {
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("llmtest: invalid status code %d", code))
	}
	return Fault{kind: kindStatus, status: code}
}

// RateLimited answers 429 with a "Retry-After" header holding retryAfter in
// whole seconds, rounded up (so 10ms becomes "1" and 0 becomes "0").
func RateLimited(retryAfter time.Duration) Fault {
	return Status(http.StatusTooManyRequests).
		WithHeader("Retry-After", strconv.FormatInt(ceilDiv(retryAfter, time.Second), 10))
}

// RateLimitedMS answers 429 with a "retry-after-ms" header holding retryAfter
// in milliseconds, rounded up: the hint OpenAI sends alongside Retry-After.
func RateLimitedMS(retryAfter time.Duration) Fault {
	return Status(http.StatusTooManyRequests).
		WithHeader("retry-after-ms", strconv.FormatInt(ceilDiv(retryAfter, time.Millisecond), 10))
}

// Reset hijacks the connection and closes it with a TCP RST before writing
// any response, so the client sees "connection reset by peer" and no status.
func Reset() Fault { return Fault{kind: kindReset} }

// Hang never answers: the handler blocks until the client cancels the
// request or the server is closed, then drops the connection without writing
// anything.
func Hang() Fault { return Fault{kind: kindHang} }

// Truncate starts a successful response and cuts the connection mid-way. A
// stream gets its role chunk and afterChunks content chunks (at most all of
// them), then the connection closes without a finish chunk or
// "data: [DONE]". A plain response gets status 200 and the full
// Content-Length header but only the first half of the JSON body, so reading
// it fails with an unexpected EOF. Negative afterChunks counts as zero.
func Truncate(afterChunks int) Fault {
	return Fault{kind: kindTruncate, chunks: max(afterChunks, 0)}
}

// FirstTokenDelay sends a stream's headers at once and its first data event
// only after d more (the whole answer then follows as usual): a provider
// that accepts the request and then thinks. A plain request's answer is
// delayed by d, headers included. It counts as a success.
func FirstTokenDelay(d time.Duration) Fault {
	return Fault{kind: kindFirstTokenDelay, delay: max(d, 0)}
}

// Stall starts a successful answer and goes silent for good: a stream gets
// its role chunk and afterEvents content chunks (at most all of them), a
// plain request its status, the full Content-Length and the first half of
// its body. The connection then stays open, sending nothing (or only
// keep-alive comments, see WithKeepAlive), until the client goes away or
// the server is closed. Negative afterEvents counts as zero.
func Stall(afterEvents int) Fault {
	return Fault{kind: kindStall, chunks: max(afterEvents, 0)}
}

// WithKeepAlive returns a copy of a Stall fault that, while stalled, sends
// the SSE comment line ": keep-alive" every d, as proxies and some
// providers do to keep an idle stream open: bytes that carry no event.
// Other faults ignore it; d <= 0 sends none.
func (f Fault) WithKeepAlive(d time.Duration) Fault {
	f.keepAlive = max(d, 0)
	return f
}

// Malformed answers with a body that is not valid JSON where JSON is
// due: in a stream, content event number event (counting from 1; values
// out of range break the last one) is replaced by a truncated JSON object
// and the stream goes on to "data: [DONE]"; a plain answer's whole body is
// a truncated JSON object, with a matching Content-Length.
func Malformed(event int) Fault {
	return Fault{kind: kindMalformed, chunks: event}
}

// NoDone ends a stream cleanly after its finish chunk (and usage chunk,
// when asked for) without the terminating "data: [DONE]" line, as several
// OpenAI-compatible providers do: the answer is whole, only the marker is
// missing. A plain request is answered normally. It counts as a success.
func NoDone() Fault { return Fault{kind: kindNoDone} }

// Delay succeeds normally after waiting d in addition to the server latency.
func Delay(d time.Duration) Fault {
	return Fault{kind: kindDelay, delay: max(d, 0)}
}

// WithHeader returns a copy of f that also sends the response header key:
// value, for example "x-should-retry: true" on a 400 or "Retry-After" on a
// 503. Values given for a key replace the server's default for that key (so
// "Content-Type" can be overridden); repeated calls with one key add values.
// Reset and Hang write no response, so they ignore headers.
func (f Fault) WithHeader(key, value string) Fault {
	f.header = f.header.Clone()
	if f.header == nil {
		f.header = make(http.Header)
	}
	f.header.Add(key, value)
	return f
}

// WithBody returns a copy of f whose error response carries body verbatim
// instead of the OpenAI-format JSON error, for example an HTML 502 page, "not
// json" or "{}". The Content-Type is application/json if body is valid JSON
// and text/plain otherwise, unless WithHeader sets it. Only error responses
// (Status, RateLimited, RateLimitedMS) have a body to replace; the other
// faults ignore it.
func (f Fault) WithBody(body string) Fault {
	f.body, f.hasBody = body, true
	return f
}

// WithCode returns a copy of a Status fault whose OpenAI-format error
// carries code as its "code", such as "context_length_exceeded" or
// "content_policy_violation" with Status(400), instead of the code the
// real API sends with that status. It does not apply to a body set with
// WithBody, nor to faults other than Status, RateLimited and
// RateLimitedMS.
func (f Fault) WithCode(code string) Fault {
	f.code = code
	return f
}

// errorFault is how the server itself rejects a request (bad credentials, a
// malformed body): a Status fault with a specific OpenAI-format message.
func errorFault(status int, message string) Fault {
	return Fault{kind: kindStatus, status: status, body: string(errorJSON(status, message)), hasBody: true}
}

// succeeds reports whether f lets the request end in a full normal response.
func (f Fault) succeeds() bool {
	switch f.kind {
	case kindOK, kindDelay, kindFirstTokenDelay, kindNoDone:
		return true
	}
	return false
}

func ceilDiv(d, unit time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + unit - 1) / unit)
}

// exchange describes how f answers a request received at t.
func (f Fault) exchange(t time.Time) Exchange {
	e := Exchange{Received: t, Status: http.StatusOK}
	switch f.kind {
	case kindStatus:
		e.Status, e.Fault = f.status, fmt.Sprintf("status %d", f.status)
	case kindReset:
		e.Status, e.Fault = 0, "reset"
	case kindHang:
		e.Status, e.Fault = 0, "hang"
	case kindTruncate:
		e.Fault = "truncate"
	case kindFirstTokenDelay:
		e.Fault = "first token delay"
	case kindStall:
		e.Fault = "stall"
	case kindMalformed:
		e.Fault = "malformed"
	case kindNoDone:
		e.Fault = "no [DONE]"
	}
	if f.kind == kindStatus && f.code != "" {
		e.Fault += " " + f.code
	}
	if f.kind == kindStatus {
		if v := f.header.Get("Retry-After-Ms"); v != "" {
			e.RetryAfter = "retry-after-ms: " + v
		} else if v := f.header.Get("Retry-After"); v != "" {
			e.RetryAfter = "Retry-After: " + v
		}
	}
	return e
}
