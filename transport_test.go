package llmdrain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sseAnswer is a complete chat stream answering "hand made".
const sseAnswer = `data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"role":"assistant","content":"hand "}}]}` + "\n\n" +
	`data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"made"},"finish_reason":"stop"}]}` + "\n\n" +
	"data: [DONE]\n\n"

// scriptedServer answers the n-th request (from 1) with handlers[n-1], and
// every later one with the last handler. It counts the requests. Handlers
// that block wait on the request's context or on the returned server's
// end, so none outlives the test.
func scriptedServer(t *testing.T, handlers ...func(w http.ResponseWriter, r *http.Request, stop <-chan struct{})) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var n atomic.Int32
	stop := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		i := int(n.Add(1))
		handlers[min(i, len(handlers))-1](w, r, stop)
	}))
	t.Cleanup(func() {
		close(stop)
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv, &n
}

func scriptedClient(t *testing.T, srv *httptest.Server, cfg Config) *Client {
	t.Helper()
	cfg.APIKey = fakeKey
	cfg.BaseURL = srv.URL + "/v1"
	if cfg.Backoff == nil {
		cfg.Backoff = func() backoff.BackOff { return &backoff.ZeroBackOff{} }
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Transport: &http.Transport{}}
	}
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.http.CloseIdleConnections() })
	return c
}

// serveStream answers a complete stream.
func serveStream(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
	w.Header().Set("Content-Type", "text/event-stream")
	_, _ = io.WriteString(w, sseAnswer)
}

// serveJSON answers a complete chat completion.
func serveJSON(w http.ResponseWriter, _ *http.Request, _ <-chan struct{}) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, okBody)
}

// headersThen sends status and the headers of body (Content-Length when
// length is set, chunked otherwise), flushed, then the first part bytes
// of body, and then cuts the connection (cut) or waits until the client
// gives up on the request.
func headersThen(status int, contentType, body string, part int, length, cut bool) func(http.ResponseWriter, *http.Request, <-chan struct{}) {
	return func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
		w.Header().Set("Content-Type", contentType)
		if length {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body[:part])
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		if cut {
			if conn, _, err := rc.Hijack(); err == nil {
				conn.Close()
			}
			return
		}
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}
}

// plainChat is Chat by a plain (not streamed) completion: the path of
// CreateChatCompletion and every JSON call.
func plainChat(ctx context.Context, c *Client, prompt string) (string, error) {
	resp, err := c.CreateChatCompletion(ctx, userMsg(prompt))
	if err != nil {
		return "", err
	}
	if len(resp.Choices) == 0 {
		return "", ErrEmptyResponse
	}
	return resp.Choices[0].Message.Content, nil
}

// callCtx bounds a test's call far above any expected duration, so that a
// regression shows as a failure rather than a hung test.
func callCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Item: a 2xx stream whose body ends or stalls before its first byte is a
// failed attempt, retried like a connection error.
func TestStreamRetriedBeforeFirstBodyByte(t *testing.T) {
	cases := []struct {
		name string
		cut  bool
		cfg  Config
	}{
		{"connection cut after the headers", true, Config{}},
		{"body stalled past AttemptTimeout", false, Config{AttemptTimeout: 100 * time.Millisecond}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv, n := scriptedServer(t, headersThen(200, "text/event-stream", sseAnswer, 0, false, c.cut), serveStream)
			cl := scriptedClient(t, srv, c.cfg)
			ctx := callCtx(t)
			start := time.Now()
			s, err := cl.CreateChatCompletionStream(ctx, userMsg("x"))
			require.NoError(t, err)
			defer s.Close()
			text, err := readStream(s)
			require.NoError(t, err, "after %v", time.Since(start))
			assert.Equal(t, "hand made", text)
			assert.Equal(t, int32(2), n.Load(), "requests")
			assert.Equal(t, 0, cl.Tracker().InFlight())
		})
	}
}

// TestStreamNoFirstByteExhausted: when every attempt ends before the first
// byte, the call fails with a RetryError saying so, never a clean EOF.
func TestStreamNoFirstByteExhausted(t *testing.T) {
	srv, n := scriptedServer(t, headersThen(200, "text/event-stream", sseAnswer, 0, false, true))
	cl := scriptedClient(t, srv, Config{MaxRetries: 2})
	_, err := cl.CreateChatCompletionStream(callCtx(t), userMsg("x"))
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 3, re.Attempts)
	assert.ErrorIs(t, err, errNoFirstEvent)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.Equal(t, int32(3), n.Load())
	assert.Equal(t, 0, cl.Tracker().InFlight())
}

// TestStreamFirstBytesKept: the bytes read to see that a stream began, an
// end read with them included, reach go-openai unchanged, however the
// stream is split.
func TestStreamFirstBytesKept(t *testing.T) {
	for _, split := range []int{1, 7, peekSize - 1, peekSize, peekSize + 1, len(sseAnswer)} {
		t.Run(strconv.Itoa(split), func(t *testing.T) {
			srv, _ := scriptedServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, sseAnswer[:min(split, len(sseAnswer))])
				_ = http.NewResponseController(w).Flush()
				_, _ = io.WriteString(w, sseAnswer[min(split, len(sseAnswer)):])
			})
			cl := scriptedClient(t, srv, Config{AttemptTimeout: time.Minute})
			s, err := cl.CreateChatCompletionStream(callCtx(t), userMsg("x"))
			require.NoError(t, err)
			defer s.Close()
			text, err := readStream(s)
			require.NoError(t, err)
			assert.Equal(t, "hand made", text)
		})
	}
}

// Item: a stream request answered with a 3xx that the http.Client does
// not follow is no stream: Recv fails with ErrNotAStream, never io.EOF. A
// redirect the client follows still works.
func TestStreamAnsweredWithRedirect(t *testing.T) {
	page := func(loc string) func(http.ResponseWriter, *http.Request, <-chan struct{}) {
		return func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
			if loc != "" {
				w.Header().Set("Location", loc)
			}
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(http.StatusFound)
			_, _ = io.WriteString(w, "<html>moved\n</html>\n")
		}
	}
	lastResponse := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, c := range []struct {
		name  string
		loc   string
		check func(*http.Request, []*http.Request) error
	}{
		{"no Location", "", nil},
		{"ErrUseLastResponse", "/v1/chat/completions", lastResponse},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, n := scriptedServer(t, page(c.loc))
			cl := scriptedClient(t, srv, Config{HTTPClient: &http.Client{Transport: &http.Transport{}, CheckRedirect: c.check}})
			s, err := cl.CreateChatCompletionStream(callCtx(t), userMsg("x"))
			if err == nil {
				defer s.Close()
				_, err = readStream(s)
			}
			require.Error(t, err, "a redirect's page read as a complete stream")
			assert.ErrorIs(t, err, ErrNotAStream)
			assert.Contains(t, err.Error(), "302 Found")
			assert.Equal(t, int32(1), n.Load(), "not retried")
			assert.Equal(t, 0, cl.Tracker().InFlight())
		})
	}
	t.Run("followed", func(t *testing.T) {
		srv, n := scriptedServer(t, page("/v1/chat/completions"), serveStream)
		cl := scriptedClient(t, srv, Config{})
		s, err := cl.CreateChatCompletionStream(callCtx(t), userMsg("x"))
		require.NoError(t, err)
		defer s.Close()
		text, err := readStream(s)
		require.NoError(t, err)
		assert.Equal(t, "hand made", text)
		assert.Equal(t, int32(2), n.Load())
		assert.Equal(t, 0, cl.Tracker().InFlight())
	})
}

// Item: AttemptTimeout bounds the error body of a failed stream attempt,
// read by the retry's discard and by go-openai on the last attempt.
func TestStreamErrorBodyBoundedByAttemptTimeout(t *testing.T) {
	const errBody = `{"error":{"message":"overloaded","type":"server_error"}}`
	srv, n := scriptedServer(t, headersThen(503, "application/json", errBody, 10, true, false))
	cl := scriptedClient(t, srv, Config{AttemptTimeout: 100 * time.Millisecond, MaxRetries: 1})
	start := time.Now()
	_, err := cl.CreateChatCompletionStream(callCtx(t), userMsg("x"))
	require.Error(t, err)
	assert.Less(t, time.Since(start), 5*time.Second, "the error body was read without bound")
	assert.ErrorIs(t, err, context.DeadlineExceeded, "the attempt timeout, not the caller's deadline: %v", err)
	assert.ErrorIs(t, err, errAttemptTimeout)
	assert.Equal(t, int32(2), n.Load(), "requests")
	assert.Equal(t, 0, cl.Tracker().InFlight())
}

// Item: the body of a successful JSON answer is read within its attempt,
// so one cut or stalled past AttemptTimeout is a failed attempt, retried.
func TestPlainBodyFailureRetried(t *testing.T) {
	cases := []struct {
		name   string
		length bool // Content-Length, or chunked
		cut    bool
		cfg    Config
	}{
		{"cut, with Content-Length", true, true, Config{}},
		{"cut, chunked", false, true, Config{}},
		{"stalled, with Content-Length", true, false, Config{AttemptTimeout: 100 * time.Millisecond}},
		{"stalled, chunked", false, false, Config{AttemptTimeout: 100 * time.Millisecond}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv, n := scriptedServer(t, headersThen(200, "application/json", okBody, len(okBody)/2, c.length, c.cut), serveJSON)
			cl := scriptedClient(t, srv, c.cfg)
			got, err := plainChat(callCtx(t), cl, "x")
			require.NoError(t, err)
			assert.Equal(t, "hand made", got)
			assert.Equal(t, int32(2), n.Load(), "requests")
			assert.Equal(t, 0, cl.Tracker().InFlight())
		})
	}
}

// TestPlainBodyFailureExhausted: a body that fails on every attempt ends
// the call with a RetryError that still matches the body's error.
func TestPlainBodyFailureExhausted(t *testing.T) {
	srv, n := scriptedServer(t, headersThen(200, "application/json", okBody, len(okBody)/2, true, false))
	// Long enough for each request to reach the server on a loaded machine:
	// the body stalls for good, so only the timeout ends each attempt.
	cl := scriptedClient(t, srv, Config{AttemptTimeout: 500 * time.Millisecond, MaxRetries: 1})
	_, err := plainChat(callCtx(t), cl, "x")
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 2, re.Attempts)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Equal(t, int32(2), n.Load())
	assert.Equal(t, 0, cl.Tracker().InFlight())
}

// TestPlainBodyAboveBoundStreamed: a JSON body larger than maxWholeBody is
// handed over once that much has arrived, and read whole by go-openai.
func TestPlainBodyAboveBoundStreamed(t *testing.T) {
	id := strings.Repeat("m", maxWholeBody)
	list := `{"object":"list","data":[{"id":"` + id + `","object":"model"}]}`
	for _, length := range []bool{true, false} {
		t.Run(fmt.Sprint("Content-Length=", length), func(t *testing.T) {
			srv, n := scriptedServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
				w.Header().Set("Content-Type", "application/json")
				if length {
					w.Header().Set("Content-Length", strconv.Itoa(len(list)))
				}
				_, _ = io.WriteString(w, list)
			})
			cl := scriptedClient(t, srv, Config{})
			models, err := cl.OpenAI().ListModels(callCtx(t))
			require.NoError(t, err)
			require.Len(t, models.Models, 1)
			assert.Equal(t, len(id), len(models.Models[0].ID))
			assert.Equal(t, int32(1), n.Load())
			assert.Equal(t, 0, cl.Tracker().InFlight())
		})
	}
}

// Item: x-should-retry: true on a 2xx does not throw the answer away.
func TestShouldRetryHeaderIgnoredOnSuccess(t *testing.T) {
	srv, n := scriptedServer(t, func(w http.ResponseWriter, r *http.Request, s <-chan struct{}) {
		w.Header().Set("x-should-retry", "true")
		serveJSON(w, r, s)
	})
	cl := scriptedClient(t, srv, Config{})
	got, err := plainChat(callCtx(t), cl, "x")
	require.NoError(t, err)
	assert.Equal(t, "hand made", got)
	assert.Equal(t, int32(1), n.Load(), "requests")
}

// Item: a stream whose [DONE] has been read no longer holds its call,
// its concurrency slot or a drain, though the server keeps the body open;
// the body still reads as ended and closes.
func TestStreamReleasedAtDone(t *testing.T) {
	srv, _ := scriptedServer(t, func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
		serveStream(w, r, stop)
		_ = http.NewResponseController(w).Flush()
		select { // held open after [DONE]
		case <-r.Context().Done():
		case <-stop:
		}
	})
	cl := scriptedClient(t, srv, Config{MaxConcurrent: 1})
	ctx := callCtx(t)
	s, err := cl.CreateChatCompletionStream(ctx, userMsg("x"))
	require.NoError(t, err)
	text, err := readStream(s)
	require.NoError(t, err)
	assert.Equal(t, "hand made", text)
	assert.Equal(t, 0, cl.Tracker().InFlight(), "released at [DONE]")

	// The slot is free: a second stream opens while the first is unclosed.
	s2, err := cl.CreateChatCompletionStream(ctx, userMsg("y"))
	require.NoError(t, err)
	_, err = readStream(s2)
	require.NoError(t, err)
	_, err = s.Recv()
	assert.ErrorIs(t, err, io.EOF, "the first stream still reads as ended")

	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	assert.NoError(t, cl.Tracker().Drain(dctx), "no straggler")
	assert.NoError(t, s.Close())
	assert.NoError(t, s2.Close())
}

// TestStreamReleasedAtDoneRawBody checks the body itself: after the Read
// that carried [DONE] the call is released and later Reads return io.EOF.
func TestStreamReleasedAtDoneRawBody(t *testing.T) {
	srv, _ := scriptedServer(t, func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
		serveStream(w, r, stop)
		_, _ = io.WriteString(w, "data: after\n\n")
		_ = http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	})
	cl := scriptedClient(t, srv, Config{})
	req, err := http.NewRequestWithContext(callCtx(t), http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader("{}"))
	require.NoError(t, err)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := cl.http.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	var got []byte
	buf := make([]byte, 1)
	for {
		k, err := resp.Body.Read(buf)
		got = append(got, buf[:k]...)
		if err != nil {
			assert.Equal(t, io.EOF, err)
			break
		}
	}
	assert.Equal(t, strings.TrimSuffix(sseAnswer, "\n"), string(got), "read to [DONE]'s line end, nothing after")
	assert.Equal(t, 0, cl.Tracker().InFlight())
	assert.NoError(t, resp.Body.Close())
}

// TestAPIErrorOnStreamStillTyped: an error status on a stream, with the
// attempt timer left running over its body, is still go-openai's
// *openai.APIError.
func TestAPIErrorOnStreamStillTyped(t *testing.T) {
	srv, _ := scriptedServer(t, func(w http.ResponseWriter, r *http.Request, _ <-chan struct{}) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(400)
		_, _ = io.WriteString(w, `{"error":{"message":"bad","type":"invalid_request_error"}}`)
	})
	cl := scriptedClient(t, srv, Config{AttemptTimeout: time.Minute})
	_, err := cl.CreateChatCompletionStream(callCtx(t), userMsg("x"))
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 400, apiErr.HTTPStatusCode)
	assert.False(t, errors.Is(err, ErrNotAStream))
}
