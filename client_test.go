package llmdrain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// newTestClient returns a client of srv that retries without waiting,
// unless cfg says otherwise.
func newTestClient(t *testing.T, srv *llmtest.Server, cfg Config) *Client {
	t.Helper()
	if cfg.APIKey == "" {
		cfg.APIKey = fakeKey
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = srv.URL
	}
	if cfg.Backoff == nil {
		cfg.Backoff = func() backoff.BackOff { return &backoff.ZeroBackOff{} }
	}
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.http.CloseIdleConnections() })
	return c
}

// newServer starts an llmtest server that requires fakeKey and serves any
// model name: these tests are about the client, which sends the models it
// is given.
func newServer(t *testing.T, opts ...llmtest.Option) *llmtest.Server {
	t.Helper()
	srv := llmtest.NewServer(append([]llmtest.Option{llmtest.WithAPIKey(fakeKey), llmtest.WithModels()}, opts...)...)
	t.Cleanup(srv.Close)
	return srv
}

func userMsg(prompt string) openai.ChatCompletionRequest {
	return openai.ChatCompletionRequest{Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: prompt}}}
}

// settled waits until the server has finished handling every chat request,
// so that its Completed and Succeeded counts are final: a client can read a
// response before the handler that wrote it has counted it.
func settled(t *testing.T, srv *llmtest.Server) *llmtest.Server {
	t.Helper()
	waitFor(t, func() bool { return srv.Stats().InFlight == 0 })
	return srv
}

// readStream reads a chat stream to its end and returns its text; the
// error is nil when the stream ended with io.EOF.
func readStream(s *openai.ChatCompletionStream) (string, error) {
	var text strings.Builder
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return text.String(), nil
		}
		if err != nil {
			return text.String(), err
		}
		if len(r.Choices) > 0 {
			text.WriteString(r.Choices[0].Delta.Content)
		}
	}
}

// waitInFlight waits until the server is handling n chat requests.
func waitInFlight(t *testing.T, srv *llmtest.Server, n int) {
	t.Helper()
	waitFor(t, func() bool { return srv.Stats().InFlight >= n })
}

func TestChat(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	got, err := c.Chat(context.Background(), "hello")
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("hello"), got)
	assert.Equal(t, 1, settled(t, srv).Completed("hello"))
	assert.Equal(t, 0, c.Tracker().InFlight())

	_, err = c.Chat(context.Background(), "")
	assert.ErrorIs(t, err, ErrEmptyPrompt)
}

func TestStreamReadsWholeAnswer(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("stream me please"))
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, 1, c.Tracker().InFlight(), "an open stream is in flight")
	text, err := readStream(s)
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("stream me please"), text)
	assert.Equal(t, 0, c.Tracker().InFlight(), "a stream read to its end is released")
}

func TestOtherEndpointsTrackedAndRetried(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	models, err := c.OpenAI().ListModels(context.Background())
	require.NoError(t, err)
	assert.NotEmpty(t, models.Models)
	emb, err := c.OpenAI().CreateEmbeddings(context.Background(), openai.EmbeddingRequest{Input: []string{"a b"}, Model: openai.SmallEmbedding3})
	require.NoError(t, err)
	assert.Len(t, emb.Data, 1)
	assert.Equal(t, 2, srv.Stats().Other)
	assert.Equal(t, 0, c.Tracker().InFlight())

	require.NoError(t, c.Shutdown(context.Background()))
	_, err = c.OpenAI().ListModels(context.Background())
	assert.ErrorIs(t, err, ErrDraining)
	assert.Equal(t, 2, srv.Stats().Other, "a refused call never reaches the server")
}

func TestShutdownWaitsForInFlightCall(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(300*time.Millisecond))
	c := newTestClient(t, srv, Config{})
	type result struct {
		text string
		err  error
	}
	res := make(chan result, 1)
	go func() {
		text, err := c.Chat(context.Background(), "slow")
		res <- result{text, err}
	}()
	waitInFlight(t, srv, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- c.Shutdown(ctx) }()
	waitFor(t, c.Tracker().Draining)

	// New calls are refused at once, without reaching the server.
	_, err := c.Chat(context.Background(), "late")
	assert.ErrorIs(t, err, ErrDraining)
	_, err = c.CreateChatCompletion(context.Background(), userMsg("late"))
	assert.ErrorIs(t, err, ErrDraining)
	_, err = c.CreateChatCompletionStream(context.Background(), userMsg("late"))
	assert.ErrorIs(t, err, ErrDraining)

	r := <-res
	require.NoError(t, r.err)
	assert.Equal(t, llmtest.Reply("slow"), r.text)
	require.NoError(t, <-drained)
	assert.Equal(t, 1, srv.Stats().Requests)
}

func TestForcedShutdownCancelsHangingCall(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	c := newTestClient(t, srv, Config{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.Chat(context.Background(), "hang")
		errc <- err
	}()
	waitInFlight(t, srv, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := c.Shutdown(ctx)
	var fe *ForcedDrainError
	require.ErrorAs(t, err, &fe)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	require.Len(t, fe.Stragglers, 1)
	assert.Equal(t, "POST /v1/chat/completions", fe.Stragglers[0].Label)
	assert.Equal(t, 0, fe.Unfinished)

	callErr := <-errc
	assert.ErrorIs(t, callErr, ErrForcedShutdown)
	assert.ErrorIs(t, callErr, context.Canceled)
	assert.Equal(t, 1, srv.Stats().Requests, "a forced call is not retried")
	assert.Equal(t, 0, c.Tracker().InFlight())
}

func TestForcedShutdownCancelsHangingStream(t *testing.T) {
	srv := newServer(t, llmtest.WithChunkDelay(time.Hour))
	c := newTestClient(t, srv, Config{})
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("a long answer"))
	require.NoError(t, err)
	defer s.Close()
	_, err = s.Recv() // the first chunk arrives, then the server stalls
	require.NoError(t, err)

	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				errc <- err
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err = c.Shutdown(ctx)
	var fe *ForcedDrainError
	require.ErrorAs(t, err, &fe)
	assert.Len(t, fe.Stragglers, 1)
	recvErr := <-errc
	assert.ErrorIs(t, recvErr, ErrForcedShutdown)
	assert.NotErrorIs(t, recvErr, io.EOF)
	assert.Equal(t, 0, c.Tracker().InFlight())
}

func TestOpenStreamHoldsDrain(t *testing.T) {
	// The server is still sending: the stream's body has not ended.
	srv := newServer(t, llmtest.WithChunkDelay(time.Hour))
	c := newTestClient(t, srv, Config{})
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("held open"))
	require.NoError(t, err)
	_, err = s.Recv()
	require.NoError(t, err)

	drained := make(chan error, 1)
	go func() { drained <- c.Shutdown(context.Background()) }()
	select {
	case err := <-drained:
		t.Fatalf("drain returned %v while a stream was open", err)
	case <-time.After(50 * time.Millisecond):
	}
	assert.Equal(t, 1, c.Tracker().InFlight())
	require.NoError(t, s.Close())
	select {
	case err := <-drained:
		assert.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("closing the stream did not end the drain")
	}
}

func TestStreamErrorDoesNotLeakSlot(t *testing.T) {
	for _, code := range []int{400, 401, 500} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			srv := newServer(t)
			srv.Script(llmtest.Status(code), llmtest.Status(code), llmtest.Status(code), llmtest.Status(code))
			c := newTestClient(t, srv, Config{})
			_, err := c.CreateChatCompletionStream(context.Background(), userMsg("x"))
			var apiErr *openai.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, code, apiErr.HTTPStatusCode)
			// go-openai reads but never closes an error body on the stream
			// path: the slot must be released all the same.
			assert.Equal(t, 0, c.Tracker().InFlight())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			assert.NoError(t, c.Shutdown(ctx))
		})
	}
}

func TestTruncatedStreamIsUnexpectedEOF(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Truncate(2))
	c := newTestClient(t, srv, Config{})
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("one two three four five"))
	require.NoError(t, err)
	defer s.Close()
	var recvErr error
	for recvErr == nil {
		_, recvErr = s.Recv()
	}
	assert.ErrorIs(t, recvErr, io.ErrUnexpectedEOF)
	assert.NotErrorIs(t, recvErr, io.EOF)
	assert.Equal(t, 1, srv.Stats().Requests, "nothing is replayed once streaming started")
	assert.Equal(t, 0, c.Tracker().InFlight())
}

// TestTruncatedPlainResponseRetried: a JSON answer cut mid-body is a
// failed attempt: retried, and when every attempt is cut, the call fails.
func TestTruncatedPlainResponseRetried(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Truncate(0))
	c := newTestClient(t, srv, Config{})
	got, err := c.Chat(context.Background(), "cut")
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("cut"), got)
	assert.Equal(t, 2, srv.Stats().Requests)
	assert.Equal(t, 0, c.Tracker().InFlight())

	srv.Script(repeat(llmtest.Truncate(0), 4)...)
	_, err = c.Chat(context.Background(), "cut")
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 4, re.Attempts)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.Equal(t, 0, c.Tracker().InFlight())
}

// TestRetryAfterHonoured: with a backoff shorter than the hint, the wait
// is the hint's.
func TestRetryAfterHonoured(t *testing.T) {
	never := func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }
	cases := []struct {
		name  string
		fault func() llmtest.Fault // made when the case runs: a date must be in the future
		want  time.Duration
	}{
		{"Retry-After seconds", func() llmtest.Fault { return llmtest.RateLimited(time.Second) }, time.Second},
		{"Retry-After date", func() llmtest.Fault {
			// HTTP dates have whole seconds: 2 s ahead is at least 1 s.
			return llmtest.Status(429).WithHeader("Retry-After", time.Now().Add(2*time.Second).UTC().Format(http.TimeFormat))
		}, time.Second},
		{"retry-after-ms", func() llmtest.Fault { return llmtest.RateLimitedMS(300 * time.Millisecond) }, 300 * time.Millisecond},
		{"Retry-After on 503", func() llmtest.Fault { return llmtest.Status(503).WithHeader("Retry-After", "1") }, time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := newServer(t)
			srv.Script(c.fault())
			cl := newTestClient(t, srv, Config{Backoff: never})
			start := time.Now()
			got, err := cl.Chat(context.Background(), "limited")
			elapsed := time.Since(start)
			require.NoError(t, err)
			assert.Equal(t, llmtest.Reply("limited"), got)
			assert.Equal(t, 2, srv.Stats().Requests)
			assert.GreaterOrEqual(t, elapsed, c.want, "waited less than the server asked")
			assert.Less(t, elapsed, c.want+2*time.Second, "waited far longer than the server asked")
		})
	}
}

// TestRetryAfterIsAFloor: with a backoff longer than the hint, the wait is
// the backoff's, so clients told the same short delay spread out.
func TestRetryAfterIsAFloor(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.RateLimitedMS(10 * time.Millisecond))
	c := newTestClient(t, srv, Config{Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(400 * time.Millisecond) }})
	start := time.Now()
	_, err := c.Chat(context.Background(), "floor")
	elapsed := time.Since(start)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, elapsed, 400*time.Millisecond)
	assert.Less(t, elapsed, 3*time.Second)
}

func TestBackoffStopEndsRetries(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.RateLimitedMS(0), llmtest.RateLimitedMS(0))
	c := newTestClient(t, srv, Config{Backoff: func() backoff.BackOff { return backoff.WithMaxRetries(&backoff.ZeroBackOff{}, 1) }})
	_, err := c.Chat(context.Background(), "x")
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 429, apiErr.HTTPStatusCode)
	assert.Contains(t, err.Error(), "backoff policy stopped after 2 attempts")
	assert.Equal(t, 2, srv.Stats().Requests)
}

func TestRetryAfterAboveCapReturnsAtOnce(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.RateLimited(2 * time.Minute))
	c := newTestClient(t, srv, Config{})
	start := time.Now()
	_, err := c.Chat(context.Background(), "x")
	assert.Less(t, time.Since(start), 2*time.Second)
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 429, apiErr.HTTPStatusCode)
	assert.Contains(t, err.Error(), "above the 1m0s cap")
	assert.Equal(t, 1, srv.Stats().Requests)
}

func TestDeadlineShorterThanBackoffReturnsAtOnce(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(503))
	c := newTestClient(t, srv, Config{Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Second) }})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err := c.Chat(ctx, "x")
	assert.Less(t, time.Since(start), time.Second, "must not start a wait that ends after the deadline")
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 503, apiErr.HTTPStatusCode)
	assert.Contains(t, err.Error(), "would pass the deadline")
	assert.Equal(t, 1, srv.Stats().Requests)
}

func TestDrainDeadlineBoundsRetryWaits(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(503))
	c := newTestClient(t, srv, Config{Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Hour) }})
	srv.SetLatency(100 * time.Millisecond)
	errc := make(chan error, 1)
	go func() { _, err := c.Chat(context.Background(), "x"); errc <- err }()
	waitInFlight(t, srv, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	require.NoError(t, c.Shutdown(ctx), "the call ends with its error well before the drain deadline")
	assert.Less(t, time.Since(start), 5*time.Second)
	var apiErr *openai.APIError
	require.ErrorAs(t, <-errc, &apiErr)
	assert.Equal(t, 503, apiErr.HTTPStatusCode)
}

func TestNonRetryableNotRetried(t *testing.T) {
	for _, code := range []int{400, 401, 403, 404, 422} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			srv := newServer(t)
			srv.Script(llmtest.Status(code))
			c := newTestClient(t, srv, Config{})
			_, err := c.Chat(context.Background(), "x")
			var apiErr *openai.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, code, apiErr.HTTPStatusCode)
			assert.Equal(t, 1, srv.Stats().Requests)
		})
	}
}

func TestShouldRetryHeaderOverride(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(400).WithHeader("x-should-retry", "true"), llmtest.Status(503).WithHeader("x-should-retry", "false"))
	c := newTestClient(t, srv, Config{})
	_, err := c.Chat(context.Background(), "x")
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 503, apiErr.HTTPStatusCode)
	assert.Equal(t, 2, srv.Stats().Requests)
}

func TestRetriesTransientFailures(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Reset(), llmtest.Status(500), llmtest.RateLimitedMS(0))
	c := newTestClient(t, srv, Config{})
	got, err := c.Chat(context.Background(), "flaky")
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("flaky"), got)
	assert.Equal(t, 4, srv.Stats().Requests)
	assert.Equal(t, 1, settled(t, srv).Completed("flaky"), "the body was rewound for every attempt")
}

func TestStreamRetriedBeforeFirstByte(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(502), llmtest.Reset())
	c := newTestClient(t, srv, Config{})
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("retry my stream"))
	require.NoError(t, err)
	defer s.Close()
	text, err := readStream(s)
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("retry my stream"), text)
	assert.Equal(t, 3, srv.Stats().Requests)
}

func TestAPIErrorPreservedAfterExhaustion(t *testing.T) {
	srv := newServer(t)
	for range 4 {
		srv.Script(llmtest.Status(503))
	}
	c := newTestClient(t, srv, Config{})
	_, err := c.Chat(context.Background(), "x")
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 503, apiErr.HTTPStatusCode)
	assert.NotEmpty(t, apiErr.Message)
	assert.Contains(t, err.Error(), "after 4 attempts")
	assert.Equal(t, 4, srv.Stats().Requests)
}

func TestConnectionErrorsExhausted(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	c, err := New(Config{APIKey: fakeKey, BaseURL: "http://" + addr + "/v1", MaxRetries: 2,
		Backoff: func() backoff.BackOff { return &backoff.ZeroBackOff{} }})
	require.NoError(t, err)
	_, err = c.Chat(context.Background(), "x")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "gave up after 3 attempts")
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 3, re.Attempts)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED, "the last attempt's error is still there")
	assert.NotContains(t, err.Error(), "FAKE")
}

func TestFailover(t *testing.T) {
	primary := newServer(t)
	fallback := newServer(t)
	for range 3 {
		primary.Script(llmtest.Status(503))
	}
	c := newTestClient(t, primary, Config{FallbackURLs: []string{fallback.URL}})
	got, err := c.Chat(context.Background(), "fail me over")
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("fail me over"), got)
	assert.Equal(t, 3, primary.Stats().Requests)
	assert.Equal(t, 1, fallback.Stats().Requests)

	// A later call keeps the endpoint that works.
	_, err = c.Chat(context.Background(), "again")
	require.NoError(t, err)
	assert.Equal(t, 3, primary.Stats().Requests)
	assert.Equal(t, 1, settled(t, fallback).Completed("again"))
}

func TestFailoverWrapsAround(t *testing.T) {
	a := newServer(t)
	b := newServer(t)
	for range 2 {
		a.Script(llmtest.Status(500))
		b.Script(llmtest.Status(500))
	}
	c := newTestClient(t, a, Config{FallbackURLs: []string{b.URL}, FailoverAfter: 2, MaxRetries: 5})
	_, err := c.Chat(context.Background(), "round")
	require.NoError(t, err)
	assert.Equal(t, 3, a.Stats().Requests, "two failures, then back after b's two")
	assert.Equal(t, 2, b.Stats().Requests)
	assert.Equal(t, 1, settled(t, a).Completed("round"))
}

// TestAttemptTimeoutRetried: an attempt that timed out once its answer had
// begun is retried on the same target (a silent one is not: see
// TestSilentTargetOneTimeout).
func TestAttemptTimeoutRetried(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Stall(0))
	c := newTestClient(t, srv, Config{AttemptTimeout: 100 * time.Millisecond})
	got, err := c.Chat(context.Background(), "eventually")
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("eventually"), got)
	assert.Equal(t, 2, srv.Stats().Requests)
}

func TestAttemptTimeoutDoesNotCutStreams(t *testing.T) {
	srv := newServer(t, llmtest.WithChunkDelay(30*time.Millisecond))
	c := newTestClient(t, srv, Config{AttemptTimeout: 100 * time.Millisecond})
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("a b c d e f g h i j"))
	require.NoError(t, err) // about 400 ms of chunks
	defer s.Close()
	for {
		_, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
	}
}

func TestCallerCancelNotRetried(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	c := newTestClient(t, srv, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := c.Chat(ctx, "x"); errc <- err }()
	waitInFlight(t, srv, 1)
	cancel()
	err := <-errc
	assert.ErrorIs(t, err, context.Canceled)
	assert.NotErrorIs(t, err, ErrForcedShutdown)
	assert.Equal(t, 1, srv.Stats().Requests)
	assert.Equal(t, 0, c.Tracker().InFlight())
}

func TestMaxConcurrent(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(50*time.Millisecond))
	c := newTestClient(t, srv, Config{MaxConcurrent: 2})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.Chat(context.Background(), fmt.Sprint("p", i))
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	assert.Equal(t, 2, srv.Stats().MaxInFlight)
	assert.Equal(t, 6, settled(t, srv).Stats().Succeeded)
}

func TestMaxConcurrentWaitIsContextBounded(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	c := newTestClient(t, srv, Config{MaxConcurrent: 1})
	hangCtx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _, _ = c.Chat(hangCtx, "holds the slot") }()
	waitInFlight(t, srv, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Chat(ctx, "waits")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	stop()
	waitFor(t, func() bool { return c.Tracker().InFlight() == 0 })
}

func TestKeyNeverInErrorsOrLogs(t *testing.T) {
	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	srv := newServer(t)
	srv.Script(llmtest.Status(503), llmtest.Status(503), llmtest.Status(503), llmtest.Status(503), llmtest.Reset(), llmtest.Status(400))
	c := newTestClient(t, srv, Config{Logger: logger, MaxRetries: 3})
	var errs []error
	_, err := c.Chat(context.Background(), "a") // exhausted 503s
	errs = append(errs, err)
	_, err = c.Chat(context.Background(), "b") // reset, then 400
	errs = append(errs, err)

	bad, err := New(Config{APIKey: "sk-WRONG-" + fakeKey, BaseURL: srv.URL, Logger: logger})
	require.NoError(t, err)
	_, err = bad.Chat(context.Background(), "c") // 401 from the server
	errs = append(errs, err)
	_, err = New(Config{APIKey: fakeKey + "\n"})
	errs = append(errs, err)
	require.NoError(t, c.Shutdown(context.Background()))
	_, err = c.Chat(context.Background(), "d")
	errs = append(errs, err)

	for _, e := range errs {
		require.Error(t, e)
		for _, s := range []string{e.Error(), fmt.Sprintf("%+v", e), fmt.Sprintf("%#v", e)} {
			assert.NotContains(t, s, "FAKE", "key in error")
		}
	}
	assert.NotEmpty(t, logs.String(), "retries are logged")
	assert.NotContains(t, logs.String(), "FAKE", "key in logs")
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprintf("%v", *c)} {
		assert.NotContains(t, s, "FAKE", "key in %q", s)
	}
}

func TestRedirectDoesNotForwardKey(t *testing.T) {
	var gotAuth []string
	var mu sync.Mutex
	other := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		gotAuth = append(gotAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		http.Error(w, `{"error":{"message":"nope"}}`, http.StatusNotFound)
	})}
	ln, err := net.Listen("tcp", "localhost:0")
	require.NoError(t, err)
	go func() { _ = other.Serve(ln) }()
	t.Cleanup(func() { other.Close() })
	// A different host name for the same loopback: Go drops Authorization
	// on redirects to another host.
	target := "http://" + strings.Replace(ln.Addr().String(), "127.0.0.1", "localhost", 1) + "/elsewhere"
	srv := newServer(t)
	srv.Script(llmtest.Status(307).WithHeader("Location", target))
	c := newTestClient(t, srv, Config{})
	_, err = c.Chat(context.Background(), "x")
	require.Error(t, err)
	mu.Lock()
	defer mu.Unlock()
	require.Len(t, gotAuth, 1)
	assert.Empty(t, gotAuth[0])
}

// TestUpperCaseURLsFailOver configures endpoints with upper-case schemes
// and hosts: failover still moves to the fallback.
func TestUpperCaseURLsFailOver(t *testing.T) {
	primary := newServer(t)
	fallback := newServer(t)
	primary.Script(repeat(llmtest.Status(503), 3)...)
	upper := func(u string) string {
		return "HTTP://" + strings.Replace(strings.TrimPrefix(u, "http://"), "127.0.0.1", "LocalHost", 1) + "/"
	}
	c := newTestClient(t, primary, Config{BaseURL: upper(primary.URL), FallbackURLs: []string{upper(fallback.URL)}})
	got, err := c.Chat(context.Background(), "fail me over")
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("fail me over"), got)
	assert.Equal(t, 3, primary.Stats().Requests)
	assert.Equal(t, 1, fallback.Stats().Requests)
	assert.Equal(t, 1, settled(t, fallback).Completed("fail me over"), "with the key")
}

// TestOpenAIRequestsGetConfigModel checks that chat and text completion
// requests made through OpenAI() that leave Model empty get Config.Model,
// and that others are sent as they are.
func TestOpenAIRequestsGetConfigModel(t *testing.T) {
	srv := newServer(t, llmtest.WithModels("configured-model", "chosen-model"))
	c := newTestClient(t, srv, Config{Model: "configured-model"})
	ctx := context.Background()
	oa := c.OpenAI()

	resp, err := oa.CreateChatCompletion(ctx, userMsg("default"))
	require.NoError(t, err)
	assert.Equal(t, "configured-model", resp.Model)

	req := userMsg("chosen")
	req.Model = "chosen-model"
	resp, err = oa.CreateChatCompletion(ctx, req)
	require.NoError(t, err)
	assert.Equal(t, "chosen-model", resp.Model)

	s, err := oa.CreateChatCompletionStream(ctx, userMsg("a stream"))
	require.NoError(t, err)
	chunk, err := s.Recv()
	require.NoError(t, err)
	assert.Equal(t, "configured-model", chunk.Model)
	_, err = readStream(s)
	require.NoError(t, err)
	require.NoError(t, s.Close())

	// Embedding models are of another kind: no default.
	emb, err := oa.CreateEmbeddings(ctx, openai.EmbeddingRequest{Input: []string{"x"}})
	require.NoError(t, err)
	assert.Equal(t, openai.EmbeddingModel(""), emb.Model)
}

// TestOpenAICompletionGetsConfigModel checks the text completion endpoint,
// which llmtest does not serve, on a server of its own.
func TestOpenAICompletionGetsConfigModel(t *testing.T) {
	srv := newRecorder(t, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
	c, err := New(Config{APIKey: fakeKey, BaseURL: "http://" + srv.addr() + "/v1", Model: "configured-model"})
	require.NoError(t, err)
	defer c.http.CloseIdleConnections()
	_, err = c.OpenAI().CreateCompletion(context.Background(), openai.CompletionRequest{Prompt: "x"})
	require.NoError(t, err)
	_, sent := srv.received()
	_, body, _ := strings.Cut(sent, "\r\n\r\n")
	assert.True(t, strings.HasPrefix(body, `{"model":"configured-model","prompt":"x"`), body)
}

func TestWithModel(t *testing.T) {
	for body, want := range map[string]string{
		`{"model":"","messages":[]}`:        `{"model":"m","messages":[]}`,
		`{"messages":[]}`:                   `{"messages":[],"model":"m"}`,
		`{"messages":[],"model":null}`:      `{"messages":[],"model":"m"}`,
		` {"messages":[],"model":""}`:       `{"messages":[],"model":"m"}`,
		`{"messages":[],"model":"x"}`:       ``,
		`{"model":"x"}`:                     ``,
		`[{"model":""}]`:                    ``,
		`--boundary\r\nmultipart, not JSON`: ``,
		``:                                  ``,
	} {
		assert.Equal(t, want, string(withModel([]byte(body), "m")), body)
	}
}

// TestModelDefaultPassesOtherBodiesThrough sends requests the model default
// must leave alone straight to a base transport.
func TestModelDefaultPassesOtherBodiesThrough(t *testing.T) {
	var got []string
	next := roundTripFunc(func(req *http.Request) (*http.Response, error) {
		b, err := io.ReadAll(req.Body)
		require.NoError(t, err)
		got = append(got, string(b))
		return &http.Response{StatusCode: 200, Body: http.NoBody}, nil
	})
	m := &modelDefault{next: next, model: "m"}
	for _, c := range []struct{ path, ctype, body string }{
		{"/v1/chat/completions", "multipart/form-data; boundary=x", `{"model":""}`},
		{"/v1/embeddings", "application/json", `{"model":""}`},
		{"/v1/chat/completions", "application/json", `{"model":"x"}`},
		{"/v1/chat/completions", "application/json", `not json`},
		{"/v1/chat/completions", "application/json", `{"mod`},
	} {
		req, err := http.NewRequest(http.MethodPost, "http://127.0.0.1"+c.path, strings.NewReader(c.body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", c.ctype)
		_, err = m.RoundTrip(req)
		require.NoError(t, err)
		assert.Equal(t, c.body, got[len(got)-1], c)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }
