package llmtest_test

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// promptly bounds how long Close may take when it has to interrupt work.
const promptly = 2 * time.Second

func hostOf(t *testing.T, srv *llmtest.Server) string {
	t.Helper()
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	return u.Host
}

func TestURL(t *testing.T) {
	srv := newServer(t)
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	assert.Equal(t, "http", u.Scheme)
	assert.Equal(t, "127.0.0.1", u.Hostname())
	assert.NotEqual(t, "0", u.Port())
	assert.Equal(t, "/v1", u.Path)
}

func TestCloseIsIdempotent(t *testing.T) {
	srv := llmtest.NewServer()
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv.Close()
		}()
	}
	wg.Wait()
	srv.Close()
}

func TestCloseRefusesConnections(t *testing.T) {
	srv := llmtest.NewServer()
	host := hostOf(t, srv)
	_, err := newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("before"))
	require.NoError(t, err)
	srv.Close()

	_, err = net.Dial("tcp", host)
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
	_, err = newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("after"))
	assert.ErrorIs(t, err, syscall.ECONNREFUSED)
}

func TestCloseDuringLatency(t *testing.T) {
	srv := llmtest.NewServer(llmtest.WithLatency(time.Hour))
	client := newClient(t, srv)
	done := make(chan error, 1)
	go func() {
		_, err := client.CreateChatCompletion(testContext(t), chatRequest("slow"))
		done <- err
	}()
	waitFor(t, "the request to reach the server", func() bool { return srv.Stats().InFlight == 1 })
	start := time.Now()
	srv.Close()
	assert.Less(t, time.Since(start), promptly)
	require.Error(t, <-done)
	assert.Equal(t, 0, srv.Stats().Succeeded)
}

func TestCloseDuringStream(t *testing.T) {
	srv := llmtest.NewServer(llmtest.WithChunkDelay(time.Hour))
	stream, err := newClient(t, srv).CreateChatCompletionStream(testContext(t), chatRequest("long story"))
	require.NoError(t, err)
	defer stream.Close()
	_, err = stream.Recv()
	require.NoError(t, err, "the first chunk arrives")

	start := time.Now()
	srv.Close()
	assert.Less(t, time.Since(start), promptly)
	_, err = stream.Recv()
	require.Error(t, err)
	st := srv.Stats()
	assert.Equal(t, 0, st.InFlight, "Close waited for the handler")
	assert.Equal(t, 0, st.Succeeded)
	assert.Equal(t, 0, srv.Completed("long story"))
}

func TestCloseWithManyKindsOfWork(t *testing.T) {
	// Close with a hang, a slow stream, a delayed reply and an idle
	// keep-alive connection all at once.
	srv := llmtest.NewServer(llmtest.WithChunkDelay(time.Hour))
	srv.Script(llmtest.Hang(), llmtest.Delay(time.Hour))
	client := newClient(t, srv)
	ctx := testContext(t)
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := client.CreateChatCompletion(ctx, chatRequest("x"))
			assert.Error(t, err)
		}()
	}
	// Both have drawn their scripted faults (a request counts in flight
	// before it is read and validated), so the stream gets none.
	waitFor(t, "hang and delay in flight", func() bool { return len(srv.History("x")) == 2 && srv.Stats().InFlight == 2 })
	stream, err := client.CreateChatCompletionStream(ctx, chatRequest("y"))
	require.NoError(t, err)
	defer stream.Close()
	_, err = stream.Recv()
	require.NoError(t, err)
	_, err = client.ListModels(ctx) // leaves an idle connection behind
	require.NoError(t, err)

	start := time.Now()
	srv.Close()
	assert.Less(t, time.Since(start), promptly)
	wg.Wait()
	assert.Equal(t, 0, srv.Stats().InFlight)
}

func TestWithAddrReusesPort(t *testing.T) {
	first := llmtest.NewServer()
	host := hostOf(t, first)
	_, err := newClient(t, first).CreateChatCompletion(testContext(t), chatRequest("one"))
	require.NoError(t, err)
	first.Close()

	second := newServer(t, llmtest.WithAddr(host))
	assert.Equal(t, first.URL, second.URL)
	resp, err := newClient(t, second).CreateChatCompletion(testContext(t), chatRequest("two"))
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("two"), resp.Choices[0].Message.Content)
	assert.Equal(t, 0, second.Completed("one"), "a new server starts from scratch")
}

func TestNewServerPanicsWhenAddressIsTaken(t *testing.T) {
	srv := newServer(t)
	assert.Panics(t, func() {
		llmtest.NewServer(llmtest.WithAddr(hostOf(t, srv))).Close()
	})
}

func TestWithAPIKey(t *testing.T) {
	srv := newServer(t, llmtest.WithAPIKey("sk-right"))
	srv.Script(llmtest.Status(http.StatusTeapot))
	ctx := testContext(t)

	wrong := newClientWithKey(t, srv, "sk-wrong")
	_, err := wrong.CreateChatCompletion(ctx, chatRequest("x"))
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusUnauthorized, apiErr.HTTPStatusCode)
	assert.Equal(t, "invalid_api_key", apiErr.Code)
	_, err = wrong.ListModels(ctx)
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusUnauthorized, apiErr.HTTPStatusCode)

	resp, err := postChat(t, newHTTPClient(t), srv, chatBody("x", false))
	require.NoError(t, err)
	body, err := readAll(t, resp)
	require.NoError(t, err)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "no Authorization header")
	decodeError(t, body)

	right := newClientWithKey(t, srv, "sk-right")
	_, err = right.CreateChatCompletion(ctx, chatRequest("x"))
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusTeapot, apiErr.HTTPStatusCode, "401s did not consume the script")
	_, err = right.CreateChatCompletion(ctx, chatRequest("x"))
	require.NoError(t, err)
	_, err = right.ListModels(ctx)
	require.NoError(t, err)

	st := settled(t, srv)
	assert.Equal(t, 4, st.Requests)
	assert.Equal(t, 3, st.Faults)
	assert.Equal(t, 1, st.Succeeded)
}

func TestAnyKeyWithoutAPIKey(t *testing.T) {
	srv := newServer(t)
	_, err := newClientWithKey(t, srv, "").CreateChatCompletion(testContext(t), chatRequest("x"))
	require.NoError(t, err)
}

func TestLatency(t *testing.T) {
	const d = 80 * time.Millisecond
	srv := newServer(t, llmtest.WithLatency(d))
	client := newClient(t, srv)
	ctx := testContext(t)
	timed := func(call func() error) time.Duration {
		start := time.Now()
		require.NoError(t, call())
		return time.Since(start)
	}
	chat := func() error { _, err := client.CreateChatCompletion(ctx, chatRequest("x")); return err }

	assert.GreaterOrEqual(t, timed(chat), d)
	assert.GreaterOrEqual(t, timed(func() error { _, err := client.ListModels(ctx); return err }), d)
	assert.GreaterOrEqual(t, timed(func() error {
		_, err := client.CreateEmbeddings(ctx, openai.EmbeddingRequest{Input: "x"})
		return err
	}), d)

	srv.SetLatency(2 * d)
	assert.GreaterOrEqual(t, timed(chat), 2*d)

	// Latency precedes the first chunk of a stream.
	start := time.Now()
	stream, err := client.CreateChatCompletionStream(ctx, chatRequest("x"))
	require.NoError(t, err)
	defer stream.Close()
	_, err = stream.Recv()
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), 2*d)
}

func TestSetLatencyConcurrently(t *testing.T) {
	srv := newServer(t)
	client := newClient(t, srv)
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			srv.SetLatency(time.Duration(i%3) * time.Millisecond)
		}
	}()
	for range 10 {
		_, err := client.CreateChatCompletion(ctx, chatRequest("x"))
		require.NoError(t, err)
	}
	cancel()
	wg.Wait()
}
