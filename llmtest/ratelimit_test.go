package llmtest_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// post sends one chat request and returns its response, body read.
func post(t *testing.T, c *http.Client, srv *llmtest.Server, prompt string) *http.Response {
	t.Helper()
	resp, err := doRequest(t, c, http.MethodPost, srv.URL+"/chat/completions", chatBody(prompt, false), nil)
	require.NoError(t, err)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestRateLimitRequests(t *testing.T) {
	// 3 requests per hour: the bucket refills by one every 20 minutes, so
	// nothing refills during the test.
	srv := newServer(t, llmtest.WithRateLimit(llmtest.RateLimit{RequestsPerMinute: 3, Period: time.Hour, Headers: true, Hints: true}))
	c := newHTTPClient(t)
	for i := range 3 {
		resp := post(t, c, srv, "hi")
		require.Equal(t, http.StatusOK, resp.StatusCode)
		assert.Equal(t, "3", resp.Header.Get("x-ratelimit-limit-requests"))
		assert.Equal(t, strconv.Itoa(2-i), resp.Header.Get("x-ratelimit-remaining-requests"))
	}
	resp := post(t, c, srv, "hi")
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	ms, err := strconv.Atoi(resp.Header.Get("retry-after-ms"))
	require.NoError(t, err)
	// One request refills in 20 minutes; a little has passed.
	assert.InDelta(t, (20 * time.Minute).Milliseconds(), ms, 60_000)
	assert.Equal(t, strconv.Itoa((ms+999)/1000), resp.Header.Get("Retry-After"))
	reset, err := time.ParseDuration(resp.Header.Get("x-ratelimit-reset-requests"))
	require.NoError(t, err)
	assert.InDelta(t, time.Hour.Seconds(), reset.Seconds(), 60) // all three to refill
	st := srv.Stats()
	assert.Equal(t, 1, st.RateLimited)
	assert.Equal(t, 1, st.Faults)
	assert.Equal(t, 3, st.Succeeded)
}

func TestRateLimitTokens(t *testing.T) {
	// The reply to "hi" is some words; its prompt is one. A bucket of
	// exactly two such requests admits two, then none.
	cost := 1 + len(strings.Fields(llmtest.Reply("hi")))
	srv := newServer(t, llmtest.WithRateLimit(llmtest.RateLimit{TokensPerMinute: 2 * cost, Period: time.Hour, Headers: true}))
	c := newHTTPClient(t)
	resp := post(t, c, srv, "hi")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, strconv.Itoa(cost), resp.Header.Get("x-ratelimit-remaining-tokens"))
	assert.Empty(t, resp.Header.Get("x-ratelimit-limit-requests"), "no request limit, no request headers")
	require.Equal(t, http.StatusOK, post(t, c, srv, "hi").StatusCode)
	resp = post(t, c, srv, "hi")
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.Empty(t, resp.Header.Get("retry-after-ms"), "no hints asked for")
	assert.Equal(t, "0", resp.Header.Get("x-ratelimit-remaining-tokens"))
}

func TestRateLimitRefills(t *testing.T) {
	// One request per 50 ms, a bucket of one: the hint says when the next
	// is admitted, and it is.
	srv := newServer(t, llmtest.WithRateLimit(llmtest.RateLimit{RequestsPerMinute: 1, Period: 50 * time.Millisecond, Hints: true}))
	c := newHTTPClient(t)
	require.Equal(t, http.StatusOK, post(t, c, srv, "hi").StatusCode)
	resp := post(t, c, srv, "hi")
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	assert.Empty(t, resp.Header.Get("x-ratelimit-limit-requests"), "no headers asked for")
	ms, err := strconv.Atoi(resp.Header.Get("retry-after-ms"))
	require.NoError(t, err)
	require.LessOrEqual(t, ms, 50)
	time.Sleep(time.Duration(ms) * time.Millisecond) // the hint itself is under test
	require.Equal(t, http.StatusOK, post(t, c, srv, "hi").StatusCode)
}

func TestSetDown(t *testing.T) {
	srv := newServer(t)
	c := newHTTPClient(t)
	srv.SetDown(http.StatusServiceUnavailable)
	require.Equal(t, http.StatusServiceUnavailable, post(t, c, srv, "hi").StatusCode)
	srv.SetDown(0)
	require.Equal(t, http.StatusOK, post(t, c, srv, "hi").StatusCode)
	assert.Equal(t, "503 (status 503)", srv.History("hi")[0].String())
	assert.Equal(t, 1, srv.Stats().Faults)
}

func TestConnections(t *testing.T) {
	srv := newServer(t)
	c := newHTTPClient(t)
	for range 3 {
		post(t, c, srv, "hi")
	}
	assert.Equal(t, 1, srv.Connections(), "one keep-alive connection")
	post(t, &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}, srv, "hi")
	assert.Equal(t, 2, srv.Connections())
}
