package llmtest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/llmdrain/llmdrain/llmtest"
)

func TestStatsCounts(t *testing.T) {
	srv := newServer(t)
	client := newClient(t, srv)
	ctx := testContext(t)

	// The tokens billed are those of the answers delivered in full.
	var prompt, completion int
	for range 2 {
		resp, err := client.CreateChatCompletion(ctx, chatRequest("plain"))
		require.NoError(t, err)
		prompt, completion = prompt+resp.Usage.PromptTokens, completion+resp.Usage.CompletionTokens
	}
	req := chatRequest("streamed a little longer")
	req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	stream, err := client.CreateChatCompletionStream(ctx, req)
	require.NoError(t, err)
	for err == nil {
		var chunk openai.ChatCompletionStreamResponse
		if chunk, err = stream.Recv(); err == nil && chunk.Usage != nil {
			prompt, completion = prompt+chunk.Usage.PromptTokens, completion+chunk.Usage.CompletionTokens
		}
	}
	stream.Close()
	require.NotZero(t, prompt)
	require.NotZero(t, completion)

	srv.Script(llmtest.Status(http.StatusInternalServerError), llmtest.Truncate(1))
	_, err = client.CreateChatCompletion(ctx, chatRequest("fails"))
	require.Error(t, err)
	stream, err = client.CreateChatCompletionStream(ctx, chatRequest("cut"))
	require.NoError(t, err)
	for err == nil {
		_, err = stream.Recv()
	}
	stream.Close()

	_, err = client.ListModels(ctx)
	require.NoError(t, err)
	_, err = client.CreateEmbeddings(ctx, openai.EmbeddingRequest{Input: "x", Model: openai.SmallEmbedding3})
	require.NoError(t, err)
	resp, err := doRequest(t, newHTTPClient(t), http.MethodGet, srv.URL+"/missing", "", nil)
	require.NoError(t, err)
	_, _ = readAll(t, resp)

	assert.Equal(t, llmtest.Stats{
		Requests:    5,
		Succeeded:   3,
		Streams:     2,
		Faults:      2,
		InFlight:    0,
		MaxInFlight: 1, // sequential requests never overlap
		Other:       3,

		PromptTokens: prompt, CompletionTokens: completion, // the 500 and the cut stream billed nothing
	}, settled(t, srv))
}

func TestMaxInFlightExact(t *testing.T) {
	// Hung requests stay in flight until released, so the high-water mark
	// is known exactly without relying on timing.
	const n = 6
	srv := newServer(t)
	for range n {
		srv.Script(llmtest.Hang())
	}
	client := newClient(t, srv)
	ctx, cancel := context.WithCancel(testContext(t))
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := client.CreateChatCompletion(ctx, chatRequest("hang"))
			assert.ErrorIs(t, err, context.Canceled)
		}()
	}
	waitFor(t, "all requests in flight", func() bool { return srv.Stats().InFlight == n })
	cancel()
	wg.Wait()
	st := settled(t, srv)
	assert.Equal(t, n, st.MaxInFlight)
	assert.Equal(t, n, st.Requests)
	assert.Equal(t, n, st.Faults)
}

func TestMaxInFlightDelayed(t *testing.T) {
	const n = 8
	srv := newServer(t, llmtest.WithLatency(150*time.Millisecond))
	client := newClient(t, srv)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := client.CreateChatCompletion(testContext(t), chatRequest("together"))
			assert.NoError(t, err)
		}()
	}
	close(start)
	wg.Wait()
	st := settled(t, srv)
	assert.Equal(t, n, st.Succeeded)
	assert.Equal(t, n, srv.Completed("together"))
	assert.GreaterOrEqual(t, st.MaxInFlight, 2, "requests overlapped")
	assert.LessOrEqual(t, st.MaxInFlight, n)
}

func TestCompleted(t *testing.T) {
	srv := newServer(t)
	client := newClient(t, srv)
	ctx := testContext(t)
	ask := func(prompt string, stream bool) error {
		req := chatRequest(prompt)
		if !stream {
			_, err := client.CreateChatCompletion(ctx, req)
			return err
		}
		s, err := client.CreateChatCompletionStream(ctx, req)
		if err != nil {
			return err
		}
		defer s.Close()
		for {
			if _, err := s.Recv(); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
	}

	require.NoError(t, ask("a", false))
	require.NoError(t, ask("a", true))
	srv.Script(llmtest.Status(http.StatusInternalServerError))
	require.Error(t, ask("b", false))
	srv.Script(llmtest.Truncate(1))
	require.Error(t, ask("c", true))
	srv.Script(llmtest.Truncate(1))
	require.Error(t, ask("d", false))
	srv.Script(llmtest.Reset())
	require.Error(t, ask("e", false))
	require.NoError(t, ask("b", false))
	// No settling needed: successes are counted before the client can see
	// the end of the response.

	assert.Equal(t, 2, srv.Completed("a"))
	assert.Equal(t, 1, srv.Completed("b"))
	assert.Equal(t, 0, srv.Completed("c"))
	assert.Equal(t, 0, srv.Completed("d"))
	assert.Equal(t, 0, srv.Completed("e"))
	assert.Equal(t, 0, srv.Completed("never asked"))
}

func TestCountsVisibleWhenClientReturns(t *testing.T) {
	srv := newServer(t)
	client := newClient(t, srv)
	ctx := testContext(t)
	for i := 1; i <= 20; i++ {
		_, err := client.CreateChatCompletion(ctx, chatRequest("now"))
		require.NoError(t, err)
		stream, err := client.CreateChatCompletionStream(ctx, chatRequest("now"))
		require.NoError(t, err)
		for err == nil {
			_, err = stream.Recv()
		}
		stream.Close()
		require.ErrorIs(t, err, io.EOF)

		require.Equal(t, 2*i, srv.Completed("now"), "no waiting: the count precedes the last byte")
		st := srv.Stats()
		require.Equal(t, 2*i, st.Succeeded)
		require.Equal(t, 2*i, st.Requests)
		require.Equal(t, i, st.Streams)
	}
}

func TestHistoryRecordsEachAnswerPerPrompt(t *testing.T) {
	srv := newServer(t, llmtest.WithAPIKey("sk-right"))
	client := newClientWithKey(t, srv, "sk-right")
	ctx := testContext(t)

	srv.Script(
		llmtest.RateLimitedMS(50*time.Millisecond),
		llmtest.RateLimited(time.Second),
		llmtest.Status(http.StatusBadGateway),
	)
	before := time.Now()
	for range 3 {
		_, err := client.CreateChatCompletion(ctx, chatRequest("again"))
		require.Error(t, err)
	}
	_, err := client.CreateChatCompletion(ctx, chatRequest("again"))
	require.NoError(t, err)
	_, err = client.CreateChatCompletion(ctx, chatRequest("other"))
	require.NoError(t, err)

	h := srv.History("again")
	require.Len(t, h, 4)
	var got []string
	for i, e := range h {
		got = append(got, e.String())
		assert.False(t, e.Received.Before(before), "exchange %d received before the first request", i)
		if i > 0 {
			assert.False(t, e.Received.Before(h[i-1].Received), "exchange %d out of order", i)
		}
	}
	assert.Equal(t, []string{
		"429 (status 429, retry-after-ms: 50)",
		"429 (status 429, Retry-After: 1)",
		"502 (status 502)",
		"200",
	}, got)
	assert.Len(t, srv.History("other"), 1)
	assert.Empty(t, srv.History("never sent"))

	// Requests the server rejects by itself are not part of the history.
	bad := newClientWithKey(t, srv, "sk-wrong")
	_, err = bad.CreateChatCompletion(ctx, chatRequest("again"))
	require.Error(t, err)
	assert.Len(t, srv.History("again"), 4)
}

func TestHistoryKeepsTheLastOfEachPrompt(t *testing.T) {
	srv := newServer(t)
	client := newClient(t, srv)
	ctx := testContext(t)

	// The first exchange, told apart by its status, is the one dropped;
	// the last, likewise, is kept last.
	srv.Script(llmtest.Status(http.StatusServiceUnavailable))
	_, err := client.CreateChatCompletion(ctx, chatRequest("often"))
	require.Error(t, err)
	const bulk = 2*llmtest.HistoryLimit + 10
	var g errgroup.Group
	g.SetLimit(8)
	for range bulk {
		g.Go(func() error {
			_, err := client.CreateChatCompletion(ctx, chatRequest("often"))
			return err
		})
	}
	require.NoError(t, g.Wait())
	srv.Script(llmtest.Status(http.StatusBadGateway))
	_, err = client.CreateChatCompletion(ctx, chatRequest("often"))
	require.Error(t, err)

	h := srv.History("often")
	require.Len(t, h, llmtest.HistoryLimit)
	for i, e := range h[:len(h)-1] {
		require.Equal(t, "200", e.String(), "exchange %d", i)
	}
	assert.Equal(t, "502 (status 502)", h[len(h)-1].String())
	assert.Equal(t, bulk+2, srv.Stats().Requests, "Stats counts every request")
	assert.Equal(t, bulk, srv.Completed("often"))
}
