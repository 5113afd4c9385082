package llmtest_test

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

func TestStatusFault(t *testing.T) {
	for _, tc := range []struct {
		code int
		typ  string
	}{
		{http.StatusBadRequest, "invalid_request_error"},
		{http.StatusUnauthorized, "invalid_request_error"},
		{http.StatusNotFound, "invalid_request_error"},
		{http.StatusTooManyRequests, "requests"},
		{http.StatusInternalServerError, "server_error"},
		{http.StatusServiceUnavailable, "server_error"},
	} {
		t.Run(strconv.Itoa(tc.code), func(t *testing.T) {
			srv := newServer(t)
			srv.Script(llmtest.Status(tc.code), llmtest.Status(tc.code))

			_, err := newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("x"))
			var apiErr *openai.APIError
			require.ErrorAs(t, err, &apiErr)
			assert.Equal(t, tc.code, apiErr.HTTPStatusCode)
			assert.Equal(t, tc.typ, apiErr.Type)
			assert.NotEmpty(t, apiErr.Message)

			resp, err := postChat(t, newHTTPClient(t), srv, chatBody("x", true))
			require.NoError(t, err)
			body, err := readAll(t, resp)
			require.NoError(t, err)
			assert.Equal(t, tc.code, resp.StatusCode, "streams get the same error")
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			assert.Equal(t, tc.typ, decodeError(t, body))
		})
	}
}

func TestStatusRejectsInvalidCode(t *testing.T) {
	assert.Panics(t, func() { llmtest.Status(0) })
	assert.Panics(t, func() { llmtest.Status(1000) })
}

func TestRateLimitedHints(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  llmtest.Fault
		header string
		want   string
	}{
		{"seconds rounded up", llmtest.RateLimited(1500 * time.Millisecond), "Retry-After", "2"},
		{"sub-second rounds to one", llmtest.RateLimited(10 * time.Millisecond), "Retry-After", "1"},
		{"whole seconds", llmtest.RateLimited(3 * time.Second), "Retry-After", "3"},
		{"zero", llmtest.RateLimited(0), "Retry-After", "0"},
		{"milliseconds", llmtest.RateLimitedMS(250 * time.Millisecond), "retry-after-ms", "250"},
		{"milliseconds rounded up", llmtest.RateLimitedMS(1500 * time.Microsecond), "retry-after-ms", "2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newServer(t)
			srv.Script(tc.fault)
			resp, err := postChat(t, newHTTPClient(t), srv, chatBody("x", false))
			require.NoError(t, err)
			body, err := readAll(t, resp)
			require.NoError(t, err)
			assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
			assert.Equal(t, tc.want, resp.Header.Get(tc.header))
			assert.Equal(t, "requests", decodeError(t, body))
		})
	}
}

func TestWithHeader(t *testing.T) {
	srv := newServer(t)
	base := llmtest.Status(http.StatusServiceUnavailable)
	withRetry := base.WithHeader("Retry-After", "3")
	withBoth := withRetry.WithHeader("x-should-retry", "false")
	srv.Script(
		llmtest.Status(http.StatusBadRequest).WithHeader("x-should-retry", "true"),
		withBoth,
		withRetry, // unchanged by the WithHeader that made withBoth
		base,      // unchanged by either
		llmtest.OK().WithHeader("x-request-id", "req_1"),
		llmtest.Status(http.StatusBadGateway).WithHeader("Content-Type", "text/html"),
	)
	c := newHTTPClient(t)
	get := func() *http.Response {
		resp, err := postChat(t, c, srv, chatBody("x", false))
		require.NoError(t, err)
		_, err = readAll(t, resp)
		require.NoError(t, err)
		return resp
	}

	resp := get()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Equal(t, "true", resp.Header.Get("x-should-retry"))

	resp = get()
	assert.Equal(t, "3", resp.Header.Get("Retry-After"))
	assert.Equal(t, "false", resp.Header.Get("x-should-retry"))

	resp = get()
	assert.Equal(t, "3", resp.Header.Get("Retry-After"))
	assert.Empty(t, resp.Header.Values("x-should-retry"))

	resp = get()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Empty(t, resp.Header.Values("Retry-After"))

	resp = get()
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "req_1", resp.Header.Get("x-request-id"))

	resp = get()
	assert.Equal(t, "text/html", resp.Header.Get("Content-Type"), "a fault header replaces the default")
}

func TestWithBody(t *testing.T) {
	const page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
	srv := newServer(t)
	srv.Script(
		llmtest.Status(http.StatusBadGateway).WithBody(page),
		llmtest.Status(http.StatusInternalServerError).WithBody("{}"),
		llmtest.Status(http.StatusBadGateway).WithBody(page),
	)
	client := newClient(t, srv)

	_, err := client.CreateChatCompletion(testContext(t), chatRequest("x"))
	var reqErr *openai.RequestError
	require.ErrorAs(t, err, &reqErr, "a non-JSON body is not an APIError")
	assert.Equal(t, http.StatusBadGateway, reqErr.HTTPStatusCode)
	assert.Equal(t, page, string(reqErr.Body))

	_, err = client.CreateChatCompletion(testContext(t), chatRequest("x"))
	require.ErrorAs(t, err, &reqErr)
	assert.Equal(t, http.StatusInternalServerError, reqErr.HTTPStatusCode)
	assert.Equal(t, "{}", string(reqErr.Body))

	resp, err := postChat(t, newHTTPClient(t), srv, chatBody("x", false))
	require.NoError(t, err)
	body, err := readAll(t, resp)
	require.NoError(t, err)
	assert.Equal(t, page, string(body))
	assert.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
}

func TestReset(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Reset(), llmtest.Reset())

	resp, err := postChat(t, newHTTPClient(t), srv, chatBody("x", false))
	require.Error(t, err)
	assert.Nil(t, resp, "no response at all")
	assert.ErrorIs(t, err, syscall.ECONNRESET)

	_, err = newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("x"))
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.ECONNRESET)

	// The server itself is unharmed.
	_, err = newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("x"))
	require.NoError(t, err)
	st := settled(t, srv)
	assert.Equal(t, 2, st.Faults)
	assert.Equal(t, 1, st.Succeeded)
}

func TestHangUntilClientGivesUp(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()

	client := newClient(t, srv)
	done := make(chan error, 1)
	go func() {
		_, err := client.CreateChatCompletion(ctx, chatRequest("x"))
		done <- err
	}()
	waitFor(t, "the request to reach the server", func() bool { return srv.Stats().InFlight == 1 })
	select {
	case err := <-done:
		t.Fatalf("hung request returned early: %v", err)
	default:
	}
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
	st := settled(t, srv)
	assert.Equal(t, 1, st.Faults)
	assert.Equal(t, 0, st.Succeeded)
}

func TestHangEndsWithClose(t *testing.T) {
	srv := llmtest.NewServer()
	srv.Script(llmtest.Hang())
	c := newHTTPClient(t)
	done := make(chan error, 1)
	go func() {
		_, err := postChat(t, c, srv, chatBody("x", false))
		done <- err
	}()
	waitFor(t, "the request to reach the server", func() bool { return srv.Stats().InFlight == 1 })

	start := time.Now()
	srv.Close()
	assert.Less(t, time.Since(start), 2*time.Second, "Close must not wait for the hang")
	assert.Equal(t, 0, srv.Stats().InFlight, "Close waits for the handler")
	err := <-done
	require.Error(t, err, "the client gets no response")
}

func TestTruncateStream(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Truncate(2), llmtest.Truncate(2), llmtest.Truncate(99), llmtest.Truncate(0))

	// Through go-openai: the role chunk, two content chunks, then an error
	// where io.EOF would mean a complete stream.
	stream, err := newClient(t, srv).CreateChatCompletionStream(testContext(t), chatRequest("a b c"))
	require.NoError(t, err)
	defer stream.Close()
	var content string
	for range 3 {
		chunk, err := stream.Recv()
		require.NoError(t, err)
		content += chunk.Choices[0].Delta.Content
	}
	assert.Equal(t, "You said: ", content)
	_, err = stream.Recv()
	require.Error(t, err)
	assert.NotErrorIs(t, err, io.EOF)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)

	c := newHTTPClient(t)
	for _, want := range []int{1 + 2, 1 + 5, 1} {
		resp, err := postChat(t, c, srv, chatBody("a b c", true))
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode)
		events, err := readEvents(t, resp)
		assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
		assert.Len(t, events, want, "role chunk plus the content chunks")
		assert.NotContains(t, events, "[DONE]")
		assert.NotContains(t, strings.Join(events, ""), "finish_reason\":\"stop")
	}
	st := settled(t, srv)
	assert.Equal(t, 4, st.Faults)
	assert.Equal(t, 0, st.Succeeded)
	assert.Equal(t, 0, srv.Completed("a b c"))
}

func TestTruncatePlain(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Truncate(0), llmtest.Truncate(0))

	resp, err := postChat(t, newHTTPClient(t), srv, chatBody("cut me", false))
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	promised, err := strconv.Atoi(resp.Header.Get("Content-Length"))
	require.NoError(t, err)
	body, err := readAll(t, resp)
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	assert.Equal(t, promised/2, len(body), "half the body")

	_, err = newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("cut me"))
	assert.ErrorIs(t, err, io.ErrUnexpectedEOF)
	settled(t, srv)
	assert.Equal(t, 0, srv.Completed("cut me"))
}

func TestDelay(t *testing.T) {
	const d = 100 * time.Millisecond
	srv := newServer(t)
	srv.Script(llmtest.Delay(d))
	start := time.Now()
	resp, err := newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("wait"))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, time.Since(start), d)
	assert.Equal(t, llmtest.Reply("wait"), resp.Choices[0].Message.Content)
	st := settled(t, srv)
	assert.Equal(t, 1, st.Succeeded)
	assert.Equal(t, 0, st.Faults, "a delayed success is not a fault")
}

func TestScriptIsFIFO(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(500), llmtest.OK(), llmtest.RateLimited(0))
	srv.Script(llmtest.Status(404))
	c := newHTTPClient(t)
	var got []int
	for range 5 {
		resp, err := postChat(t, c, srv, chatBody("x", false))
		require.NoError(t, err)
		_, err = readAll(t, resp)
		require.NoError(t, err)
		got = append(got, resp.StatusCode)
	}
	assert.Equal(t, []int{500, 200, 429, 404, 200}, got, "then the empty queue succeeds")
}

func TestScriptEachFaultUsedOnce(t *testing.T) {
	srv := newServer(t)
	const faults, requests = 10, 20
	for range faults {
		srv.Script(llmtest.Status(http.StatusInternalServerError))
	}
	c := newHTTPClient(t)
	codes := make(chan int, requests)
	for range requests {
		go func() {
			resp, err := postChat(t, c, srv, chatBody("x", false))
			if !assert.NoError(t, err) {
				codes <- 0
				return
			}
			_, err = readAll(t, resp)
			assert.NoError(t, err)
			codes <- resp.StatusCode
		}()
	}
	count := map[int]int{}
	for range requests {
		count[<-codes]++
	}
	assert.Equal(t, map[int]int{200: requests - faults, 500: faults}, count)
}

func TestZeroFaultIsOK(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Fault{})
	_, err := newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("x"))
	require.NoError(t, err)
}
