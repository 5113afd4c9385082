package llmdrain

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// Item: a stream whose first event does not come within FirstTokenTimeout
// is abandoned and tried again; nothing had reached the caller.
func TestFirstTokenTimeoutRetriesStream(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.FirstTokenDelay(5 * time.Second))
	// Long enough for the second attempt's answer to come within it on a
	// loaded machine, short against the first one's 5 s delay.
	c := newTestClient(t, srv, Config{FirstTokenTimeout: 500 * time.Millisecond})
	start := time.Now()
	s, err := c.CreateChatCompletionStream(callCtx(t), userMsg("think first"))
	require.NoError(t, err)
	defer s.Close()
	text, err := readStream(s)
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("think first"), text)
	assert.Less(t, time.Since(start), 3*time.Second)
	assert.Equal(t, 2, srv.Stats().Requests, "one extra request")
	h := srv.History("think first")
	require.Len(t, h, 2)
	assert.Equal(t, "first token delay", h[0].Fault)
}

// Item: keep-alive comments before the first event are no answer: they
// neither stop the first-token timeout nor get lost once the answer comes.
func TestKeepAlivesBeforeFirstEvent(t *testing.T) {
	keepAlives := func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for {
			_, _ = io.WriteString(w, ": keep-alive\n\nevent: ping\n\n")
			_ = rc.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	thenAnswer := func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, ": processing\n\n")
		_ = http.NewResponseController(w).Flush()
		serveStream(w, r, stop)
	}
	srv, n := scriptedServer(t, keepAlives, thenAnswer)
	cl := scriptedClient(t, srv, Config{FirstTokenTimeout: 100 * time.Millisecond})
	s, err := cl.CreateChatCompletionStream(callCtx(t), userMsg("x"))
	require.NoError(t, err)
	defer s.Close()
	text, err := readStream(s)
	require.NoError(t, err)
	assert.Equal(t, "hand made", text)
	assert.Equal(t, int32(2), n.Load(), "the keep-alives alone were taken for silence")
}

// Item: a plain call to a provider that never answers is bounded by the
// first-token timeout, once per attempt, and ends in an error that says
// it timed out.
func TestSilentPlainCallBounded(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	c := newTestClient(t, srv, Config{FirstTokenTimeout: 50 * time.Millisecond, MaxRetries: 1})
	start := time.Now()
	_, err := c.CreateChatCompletion(context.Background(), userMsg("anyone?"))
	require.Error(t, err)
	assert.Less(t, time.Since(start), 3*time.Second)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorIs(t, err, errSilent, "the attempt is one that heard nothing")
	var to interface{ Timeout() bool }
	require.ErrorAs(t, err, &to)
	assert.True(t, to.Timeout())
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 1, re.Attempts, "a single target costs one timeout, not one per retry")
	assert.Contains(t, err.Error(), "before the response headers")
	assert.Equal(t, 1, srv.Stats().Requests)
	assert.Equal(t, 0, c.Tracker().InFlight())
}

// Item: the first-token timeout stops at the headers of a plain call: a
// body that takes longer to come is not cut by it.
func TestFirstTokenTimeoutSparesPlainBody(t *testing.T) {
	slowBody := func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(200)
		_, _ = io.WriteString(w, okBody[:10])
		_ = http.NewResponseController(w).Flush()
		time.Sleep(150 * time.Millisecond)
		_, _ = io.WriteString(w, okBody[10:])
	}
	srv, n := scriptedServer(t, slowBody)
	cl := scriptedClient(t, srv, Config{FirstTokenTimeout: 50 * time.Millisecond})
	got, err := plainChat(callCtx(t), cl, "x")
	require.NoError(t, err)
	assert.Equal(t, "hand made", got)
	assert.Equal(t, int32(1), n.Load())
}

// Item: an AttemptTimeout that passes before anything of an answer came
// is silence too; one that passes reading a body is not.
func TestAttemptTimeoutSilentOnlyBeforeAnswer(t *testing.T) {
	e := newTimeoutError(errAttemptTimeout, time.Second, waitHeaders, errAttemptTimeout)
	assert.ErrorIs(t, e, errSilent)
	assert.ErrorIs(t, e, context.DeadlineExceeded)
	assert.Equal(t, "llmdrain: attempt timed out after 1s before the response headers", e.Error())
	e = newTimeoutError(errAttemptTimeout, time.Second, readingBody, io.ErrUnexpectedEOF)
	assert.NotErrorIs(t, e, errSilent)
	assert.ErrorIs(t, e, io.ErrUnexpectedEOF)
	assert.Equal(t, broken, classify(context.Background(), nil, e, DefaultShouldRetry))
	// A stream whose headers came but no event is retried like a broken
	// attempt; only an attempt that heard nothing at all is silent.
	e = newTimeoutError(errFirstTokenTimeout, time.Minute, waitFirstEvent, context.Canceled)
	assert.Equal(t, broken, classify(context.Background(), nil, e, DefaultShouldRetry))
	e = newTimeoutError(errFirstTokenTimeout, time.Minute, waitHeaders, context.Canceled)
	assert.Equal(t, silent, classify(context.Background(), nil, e, DefaultShouldRetry))
}

// stalledStream opens a stream of prompt and reads it to its end.
func stalledStream(t *testing.T, c *Client, prompt string) (string, error) {
	t.Helper()
	s, err := c.CreateChatCompletionStream(callCtx(t), userMsg(prompt))
	require.NoError(t, err)
	defer s.Close()
	text, err := readStream(s)
	assert.Equal(t, 0, c.Tracker().InFlight(), "the stalled stream's call is released before Close")
	return text, err
}

// Item: a gap between events longer than StreamIdleTimeout ends the
// stream with ErrStreamStalled, keep-alives or not, and releases its call.
func TestStreamIdleTimeout(t *testing.T) {
	for name, f := range map[string]llmtest.Fault{"silent": llmtest.Stall(2), "keep-alives": llmtest.Stall(2).WithKeepAlive(5 * time.Millisecond)} {
		t.Run(name, func(t *testing.T) {
			srv := newServer(t)
			srv.Script(f)
			c := newTestClient(t, srv, Config{StreamIdleTimeout: 100 * time.Millisecond})
			start := time.Now()
			text, err := stalledStream(t, c, "one two three four")
			require.Error(t, err)
			assert.Less(t, time.Since(start), 3*time.Second)
			assert.ErrorIs(t, err, ErrStreamStalled)
			assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
			assert.Contains(t, err.Error(), "no event for 100ms", "says how long it waited")
			assert.Equal(t, "You said: ", text, "the events before the stall")
			assert.Equal(t, 1, srv.Stats().Requests, "nothing replayed mid-stream")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			assert.NoError(t, c.Shutdown(ctx), "the drain does not wait for the stalled stream")
		})
	}
}

// Item: a long but steady stream is not cut: every gap is below the idle
// timeout, the whole far above it.
func TestSteadyStreamNotCut(t *testing.T) {
	srv := newServer(t, llmtest.WithChunkDelay(20*time.Millisecond))
	c := newTestClient(t, srv, Config{StreamIdleTimeout: 150 * time.Millisecond, FirstTokenTimeout: 150 * time.Millisecond})
	prompt := strings.Repeat("word ", 20) // about 24 events, 480 ms
	start := time.Now()
	text, err := stalledStream(t, c, prompt)
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply(prompt), text)
	assert.Greater(t, time.Since(start), 300*time.Millisecond)
	assert.Equal(t, 1, srv.Stats().Requests)
}

// Item: a slow reader is not taken for a stalled stream: the idle
// watchdog cuts only a reader that waits.
func TestSlowReaderNotCut(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{StreamIdleTimeout: 50 * time.Millisecond})
	s, err := c.CreateChatCompletionStream(callCtx(t), userMsg("take your time"))
	require.NoError(t, err)
	defer s.Close()
	var text strings.Builder
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		text.WriteString(r.Choices[0].Delta.Content)
		time.Sleep(80 * time.Millisecond) // busy between two Recv
	}
	assert.Equal(t, llmtest.Reply("take your time"), text.String())
}

// Item: a stream that ends cleanly after its finish_reason is complete
// without [DONE]; one cut before is not.
func TestStreamCompleteWithoutDone(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	srv.Script(llmtest.NoDone())
	text, err := stalledStream(t, c, "no marker")
	require.NoError(t, err, "io.EOF")
	assert.Equal(t, llmtest.Reply("no marker"), text)

	srv.Script(llmtest.NoDone()) // the usage chunk after the finish
	req := userMsg("with usage")
	req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	s, err := c.CreateChatCompletionStream(callCtx(t), req)
	require.NoError(t, err)
	text, err = readStream(s)
	s.Close()
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("with usage"), text)

	srv.Script(llmtest.Truncate(1))
	_, err = stalledStream(t, c, "cut short here")
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

// Item: a data event that is not JSON ends the stream with
// ErrMalformedEvent (an incomplete answer), after the events before it.
func TestMalformedEventEndsStream(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Malformed(2))
	c := newTestClient(t, srv, Config{})
	text, err := stalledStream(t, c, "one two three")
	assert.ErrorIs(t, err, ErrMalformedEvent)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.Equal(t, "You ", text, "the events before the malformed one")
	var se interface{ Error() string }
	require.ErrorAs(t, err, &se)
	assert.NotContains(t, err.Error(), "invalid character", "not go-openai's JSON error")
}

// Item: Chat streams under the hood, so the watchdogs protect it, and an
// answer cut, stalled or malformed mid-way is asked for again whole.
func TestChatRetriesWholeAnswer(t *testing.T) {
	for name, f := range map[string]llmtest.Fault{"stall": llmtest.Stall(1), "cut": llmtest.Truncate(1), "malformed": llmtest.Malformed(1), "first token": llmtest.FirstTokenDelay(5 * time.Second)} {
		t.Run(name, func(t *testing.T) {
			srv := newServer(t)
			srv.Script(f)
			c := newTestClient(t, srv, Config{StreamIdleTimeout: 100 * time.Millisecond, FirstTokenTimeout: 100 * time.Millisecond})
			got, err := c.Chat(callCtx(t), "say it all")
			require.NoError(t, err)
			assert.Equal(t, llmtest.Reply("say it all"), got)
			assert.Equal(t, 2, srv.Stats().Requests)
			assert.Equal(t, 0, c.Tracker().InFlight())
		})
	}
}

// Item: Chat's whole retries share MaxRetries with the transport's, and
// its error counts every attempt.
func TestChatWholeRetriesExhausted(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Truncate(1), llmtest.Status(500), llmtest.Truncate(1), llmtest.Truncate(1))
	c := newTestClient(t, srv, Config{MaxRetries: 2})
	_, err := c.Chat(callCtx(t), "never whole")
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 3, re.Attempts)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.Equal(t, 3, srv.Stats().Requests, "MaxRetries bounds the whole call")
}

// Item: Chat makes no new attempt once a drain began.
func TestChatNoWholeRetryWhileDraining(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Stall(1))
	c := newTestClient(t, srv, Config{StreamIdleTimeout: 200 * time.Millisecond})
	errc := make(chan error, 1)
	go func() { _, err := c.Chat(context.Background(), "stall then drain"); errc <- err }()
	waitFor(t, func() bool { return len(srv.History("stall then drain")) == 1 })
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		drained <- c.Shutdown(ctx)
	}()
	err := <-errc
	assert.ErrorIs(t, err, ErrStreamStalled)
	assert.Contains(t, err.Error(), "a drain began")
	assert.NoError(t, <-drained)
	assert.Equal(t, 1, srv.Stats().Requests)
}

// Chat keeps ErrEmptyResponse: a stream without a choice.
func TestChatEmptyStream(t *testing.T) {
	empty := func(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, `data: {"id":"c","object":"chat.completion.chunk","choices":[]}`+"\n\ndata: [DONE]\n\n")
	}
	srv, _ := scriptedServer(t, empty)
	cl := scriptedClient(t, srv, Config{})
	_, err := cl.Chat(callCtx(t), "x")
	assert.ErrorIs(t, err, ErrEmptyResponse)
}

// Chat against a server that ignores "stream": true still gets its answer.
func TestChatServerIgnoresStream(t *testing.T) {
	srv, n := scriptedServer(t, serveJSON)
	cl := scriptedClient(t, srv, Config{})
	got, err := cl.Chat(callCtx(t), "x")
	require.NoError(t, err)
	assert.Equal(t, "hand made", got)
	assert.Equal(t, int32(2), n.Load(), "asked again as a plain call")
}

func TestFinishScan(t *testing.T) {
	cases := []struct {
		line      string
		set, null bool
	}{
		{`data: {"choices":[{"delta":{},"finish_reason":"stop"}]}`, true, false},
		{`data: {"choices":[{"delta":{},"finish_reason" :  "length"}]}`, true, false},
		{`data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}`, false, true},
		{`data: {"choices":[{"delta":{"content":"a"},"finish_reason":""}]}`, false, true},
		{`data: {"choices":[{"delta":{"content":"say \"finish_reason\":\"stop\""}}]}`, false, false},
		{`data: {"choices":[],"usage":{"total_tokens":3}}`, false, false},
	}
	for _, c := range cases {
		for split := 0; split <= len(c.line); split++ {
			var f finishScan
			f.scan([]byte(c.line[:split]))
			f.scan([]byte(c.line[split:]))
			assert.Equal(t, c.set, f.set, "%s split at %d", c.line, split)
			assert.Equal(t, c.null, f.null, "%s split at %d", c.line, split)
		}
		var f finishScan // byte by byte
		for i := range len(c.line) {
			f.scan([]byte{c.line[i]})
		}
		assert.Equal(t, c.set, f.set, "%s byte by byte", c.line)
	}
}

// slowBody sends its bytes a read at a time, waiting gap before each: an
// upload on a slow link.
type slowBody struct {
	b   []byte
	gap time.Duration
}

func (s *slowBody) Read(p []byte) (int, error) {
	if len(s.b) == 0 {
		return 0, io.EOF
	}
	time.Sleep(s.gap)
	n := copy(p, s.b)
	s.b = s.b[n:]
	return n, nil
}

func (s *slowBody) Close() error { return nil }

// An upload that takes longer than FirstTokenTimeout is progress, not
// silence: the wait for the first sign of an answer counts from the
// request's last byte. (A body under a megabyte is not watched: it is sent
// in a moment.)
func TestSlowUploadIsNotSilence(t *testing.T) {
	srv, n := scriptedServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, okBody)
	})
	// The answer must come within the timeout once the upload is done,
	// even on a loaded machine; the upload takes over twice as long.
	const timeout = 500 * time.Millisecond
	c := scriptedClient(t, srv, Config{FirstTokenTimeout: timeout, MaxRetries: -1})
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("a", sentAtOnce) + `"}]}`)
	req, err := http.NewRequestWithContext(callCtx(t), http.MethodPost, srv.URL+"/v1/chat/completions", nil)
	require.NoError(t, err)
	// 40 ms a read of at most 32 KiB: over a second for the whole body.
	req.GetBody = func() (io.ReadCloser, error) { return &slowBody{b: body, gap: 40 * time.Millisecond}, nil }
	req.Body, _ = req.GetBody()
	req.ContentLength = int64(len(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	start := time.Now()
	resp, err := c.http.Do(req)
	require.NoError(t, err, "the first-token wait must not run while the request is still being sent")
	defer resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, int32(1), n.Load())
	assert.Greater(t, time.Since(start), timeout, "the upload outlasted the first-token timeout")
}

// Item: first-token timers stopped in time are kept for later attempts
// (firstTimer); one kept from an answered call bounds the next call's
// wait, from that call's start, and never ends a later attempt.
func TestFirstTokenTimerKept(t *testing.T) {
	srv := newServer(t)
	// Long enough that an answer on a loaded machine comes well within it.
	const timeout = time.Second
	c := newTestClient(t, srv, Config{FirstTokenTimeout: timeout, MaxRetries: 1})
	for i := range 3 {
		_, err := c.CreateChatCompletion(callCtx(t), userMsg("answered"))
		require.NoError(t, err, "round %d", i)

		srv.Script(llmtest.Hang())
		start := time.Now()
		_, err = c.CreateChatCompletion(callCtx(t), userMsg("anyone?"))
		took := time.Since(start)
		require.ErrorIs(t, err, errSilent, "round %d", i)
		assert.GreaterOrEqual(t, took, timeout, "round %d: the whole wait, counted from this call", i)
		assert.Less(t, took, 10*time.Second, "round %d", i)
	}
	s, err := c.CreateChatCompletionStream(callCtx(t), userMsg("a stream"))
	require.NoError(t, err)
	text, err := readStream(s)
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("a stream"), text)
	require.NoError(t, s.Close())
	assert.Equal(t, 7, srv.Stats().Requests, "one attempt each: no timer ended an attempt it was not for")
	assert.Equal(t, 0, c.Tracker().InFlight())
}
