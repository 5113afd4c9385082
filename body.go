package llmdrain

// The bodies of the responses the transport hands over, and the reads it
// makes of them within an attempt.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/llmdrain/llmdrain/internal/header"
)

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

// maxPeek bounds what is read of a stream in search of its first event:
// past it, what came (comments, keep-alives, blank lines) is handed over as
// it is, and the stream's idle watchdog bounds the rest.
const maxPeek = 64 << 10

// errNoFirstEvent is the error of a 2xx stream whose body ended before its
// first event: no answer was received, so the attempt failed.
var errNoFirstEvent = errors.New("llmdrain: stream ended before its first event")

// peekFirstEvent waits for a stream's first event, so that a stream cut or
// stalled before one arrived is a failed attempt, and keeps what it read
// in front of the rest of resp.Body. An event is a line that is not SSE
// filler: a data line, or anything no SSE stream sends (an error envelope
// sent as JSON, a page), which go-openai is left to report. Comments
// (keep-alives), blank lines and event:, id: and retry: fields are filler.
func peekFirstEvent(resp *http.Response) error {
	buf := make([]byte, 0, peekSize)
	scanned := 0 // buf[:scanned] is whole lines of filler
	for empty := 0; ; {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, len(buf))
		}
		n, err := resp.Body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		for {
			i := bytes.IndexByte(buf[scanned:], '\n')
			if i < 0 {
				break
			}
			if !sseFiller(buf[scanned : scanned+i]) {
				resp.Body = &bufferedBody{b: buf, rc: resp.Body, tailErr: err}
				return nil
			}
			scanned += i + 1
		}
		switch {
		case err == io.EOF && !sseFiller(buf[scanned:]):
			// An unterminated last line, go-openai's to judge.
			resp.Body = &bufferedBody{b: buf, rc: resp.Body, tailErr: err}
			return nil
		case err == io.EOF:
			return fmt.Errorf("%w: %w", errNoFirstEvent, io.ErrUnexpectedEOF)
		case err != nil:
			return fmt.Errorf("%w: %w", errNoFirstEvent, err)
		case len(buf) >= maxPeek:
			resp.Body = &bufferedBody{b: buf, rc: resp.Body}
			return nil
		case n == 0:
			if empty++; empty == maxEmptyReads {
				return fmt.Errorf("%w: %w", errNoFirstEvent, io.ErrNoProgress)
			}
		}
	}
}

// sseFiller reports whether line (without its '\n') carries no event: it
// is blank, a comment, or an event:, id: or retry: field.
func sseFiller(line []byte) bool {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] == ':' {
		return true
	}
	for _, f := range sseFields {
		if bytes.HasPrefix(line, f) {
			return true
		}
	}
	return false
}

var sseFields = [][]byte{[]byte("event:"), []byte("id:"), []byte("retry:")}

// readWhole reads a successful JSON body into memory, up to maxWholeBody
// bytes, so that a body cut or stalled is a failed attempt; past the bound
// the rest is read from resp.Body as it comes. Content-Length only sizes
// the buffer: the body is read to its end, as go-openai would, whatever a
// base transport put there. bb, the body that replaces resp.Body, is the
// caller's, so that it can be allocated with the call.
func readWhole(resp *http.Response, bb *bufferedBody) error {
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
	*bb = bufferedBody{b: b, rc: resp.Body}
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

func isSSE(resp *http.Response) bool {
	return strings.HasPrefix(header.Value(resp.Header, "Content-Type"), "text/event-stream")
}

// endsWithDone reports whether a streaming endpoint terminates its stream
// with "data: [DONE]". The Responses API, for one, does not.
func endsWithDone(path string) bool {
	return strings.HasSuffix(path, "/chat/completions") || strings.HasSuffix(path, "/completions")
}

// trackedBody is the body of the response a call hands over. It keeps the
// call in flight until it is closed or read to its end (for a stream, to
// its [DONE] event, after which it reads as ended), turns a chat or
// completion stream that ends without [DONE] or a finish_reason into
// io.ErrUnexpectedEOF, and one whose idle watchdog fired into
// ErrStreamStalled.
type trackedBody struct {
	c   *call
	rc  io.ReadCloser
	sse *sseWatcher // nil unless a successful stream
	// reading is set while a Read waits on rc: the stream's idle
	// watchdog cuts only a reader that waits.
	reading atomic.Bool
	// env wraps rc on a successful JSON answer; kept here, not allocated
	// on its own, as it is on the path of every plain call.
	env envelopeBody
}

func (b *trackedBody) Read(p []byte) (int, error) {
	if b.sse != nil && b.sse.done {
		// Released at [DONE]: the rest is not the answer's, and the
		// call's context, which the connection hangs on, has ended.
		return 0, io.EOF
	}
	b.reading.Store(true)
	n, err := b.rc.Read(p)
	b.reading.Store(false)
	if b.sse != nil {
		b.sse.Write(p[:n])
		if b.sse.done && err == nil {
			// The answer is complete: a server that keeps the connection
			// open after it must not hold the call, its slot or a drain.
			b.c.release()
			return n, nil
		}
	}
	switch {
	case err == nil:
		return n, nil
	case err == io.EOF:
		if b.sse != nil && b.sse.mustEnd && !b.sse.done && !b.sse.finished {
			err = errTruncated
		}
	case b.c.ctx.Err() != nil && !attemptCut(context.Cause(b.c.ctx)):
		// The call's end (its caller's, or a forced drain's), not its
		// attempt's (a stall, below, or a timeout).
		err = callError(b.c.ctx, err)
	case b.sse != nil && b.c.wd.Fired():
		err = fmt.Errorf("%w: no event for %v", ErrStreamStalled, b.c.t.idleTimeout)
	}
	if b.c.obs != nil && err != io.EOF {
		b.c.obs.fail(err)
	}
	b.c.release()
	return n, err
}

func (b *trackedBody) Close() error {
	err := b.rc.Close()
	b.c.release()
	return err
}

// errTruncated is what reading a chat stream returns when the connection
// ended before the terminating "data: [DONE]" event and after no event
// with a finish_reason: without it a cut-off stream would look like a
// finished one.
var errTruncated = fmt.Errorf("llmdrain: stream ended without [DONE] or a finish_reason: %w", io.ErrUnexpectedEOF)

// ErrStreamStalled is the error, matched with errors.Is, that reading a
// successful stream returns when no event came for longer than
// Config.StreamIdleTimeout while the stream was being read; comment lines
// and keep-alives do not count as events. The stream ends there and its
// call is released. It also matches io.ErrUnexpectedEOF: the answer is
// incomplete.
var ErrStreamStalled = fmt.Errorf("llmdrain: stream stalled: %w", io.ErrUnexpectedEOF)

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
