package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/examples/internal/proctest"
	"github.com/llmdrain/llmdrain/internal/serversettings"
	"github.com/llmdrain/llmdrain/llmtest"
)

// bin is the server command, built once for all tests.
var bin string

func TestMain(m *testing.M) { proctest.Main(m, &bin) }

const testKey = "sk-test-0123456789abcdef-secret"

// upstream is a fake LLM in the test process that requires testKey, so the
// server runs exactly as with a real key, and the env to reach it.
func upstream(t *testing.T, opts ...llmtest.Option) (*llmtest.Server, []string) {
	srv := llmtest.NewServer(append(opts, llmtest.WithAPIKey(testKey))...)
	t.Cleanup(srv.Close)
	return srv, []string{"HOLYSHEEP_API_KEY=" + testKey, "HOLYSHEEP_BASE_URL=" + srv.URL}
}

// startServer runs the server on a free loopback port and returns it with
// the address it logged.
func startServer(t *testing.T, env ...string) (*proctest.Proc, string) {
	p := proctest.Start(t, bin, append(env, "ADDR=127.0.0.1:0"))
	return p, listenAddr(t, p)
}

// listenAddr waits for the server's "listening" line and returns its address.
func listenAddr(t *testing.T, p *proctest.Proc) string {
	t.Helper()
	var addr string
	p.WaitLine(proctest.Stderr, 10*time.Second, "the listening log line", func(l string) bool {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == "listening" {
			addr = rec.Addr
			return true
		}
		return false
	})
	return addr
}

// checkLogs asserts every log line is JSON (stderr is not a terminal) and
// that the key appears nowhere.
func checkLogs(t *testing.T, p *proctest.Proc) {
	t.Helper()
	for _, l := range p.Lines(proctest.Stderr) {
		assert.True(t, json.Valid([]byte(l)), "log line is not JSON: %s", l)
	}
	assert.NotContains(t, p.Output(proctest.Stderr), testKey)
	assert.NotContains(t, p.Output(proctest.Stdout), testKey)
}

// httpClient makes a client whose connections are closed when the test
// ends; fresh ones never reuse a connection, so each request is a new
// connection the server must accept.
func httpClient(t *testing.T, fresh bool) *http.Client {
	tr := &http.Transport{DisableKeepAlives: fresh}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

type result struct {
	prompt string
	stream bool
	status int
	header http.Header
	text   string // the answer, concatenated for a stream
	done   bool   // a stream ended with data: [DONE]
	errEv  bool   // a stream carried an error event
	err    error
}

// generate calls POST /v1/generate and reads the whole answer.
func generate(c *http.Client, addr, prompt string, stream bool) result {
	res := result{prompt: prompt, stream: stream}
	body, _ := json.Marshal(map[string]any{"prompt": prompt, "stream": stream})
	resp, err := c.Post("http://"+addr+"/v1/generate", "application/json", strings.NewReader(string(body)))
	if err != nil {
		res.err = err
		return res
	}
	defer resp.Body.Close()
	res.status, res.header = resp.StatusCode, resp.Header
	if !stream || resp.StatusCode != http.StatusOK {
		var out generateResponse
		b, err := io.ReadAll(resp.Body)
		if err == nil {
			err = json.Unmarshal(b, &out)
		}
		res.text, res.err = out.Text, err
		return res
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "data: [DONE]":
			res.done = true
		case line == "event: error":
			res.errEv = true
		case strings.HasPrefix(line, "data: ") && !res.errEv:
			var piece generateResponse
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &piece); err != nil {
				res.err = err
				return res
			}
			res.text += piece.Text
		}
	}
	res.err = sc.Err()
	return res
}

func get(c *http.Client, addr, path string) int {
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func refused(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		conn.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// TestSIGTERMMidFlight is the Kubernetes scale-down: requests in flight
// upstream, plain and streamed, when SIGTERM arrives.
func TestSIGTERMMidFlight(t *testing.T) {
	const drainDelay = 500 * time.Millisecond
	srv, env := upstream(t, llmtest.WithLatency(1500*time.Millisecond), llmtest.WithChunkDelay(100*time.Millisecond))
	p, addr := startServer(t, append(env, "DRAIN_DELAY="+drainDelay.String(), "DRAIN_TIMEOUT=20s")...)
	probes := httpClient(t, true)
	require.Equal(t, http.StatusOK, get(probes, addr, "/readyz"))
	require.Equal(t, http.StatusOK, get(probes, addr, "/healthz"))

	c := httpClient(t, false)
	results := make(chan result, 6)
	for i := range 3 {
		go func() { results <- generate(c, addr, fmt.Sprintf("plain request number %d", i), false) }()
		go func() { results <- generate(c, addr, fmt.Sprintf("streamed request number %d of three", i), true) }()
	}
	proctest.Eventually(t, 10*time.Second, "6 calls in flight upstream", func() bool { return srv.Stats().InFlight == 6 })

	signalled := time.Now()
	p.Signal(syscall.SIGTERM)
	proctest.Eventually(t, 2*time.Second, "/readyz 503 on a new connection", func() bool {
		return get(probes, addr, "/readyz") == http.StatusServiceUnavailable
	})
	assert.Equal(t, http.StatusOK, get(probes, addr, "/healthz"), "liveness stays 200 while draining")

	proctest.Eventually(t, 5*time.Second, "new connections refused", func() bool { return refused(addr) })
	assert.GreaterOrEqual(t, time.Since(signalled), drainDelay, "connections accepted for DRAIN_DELAY")
	assert.Empty(t, results, "the listener closed while every request was still in flight")

	for range 6 {
		r := <-results
		require.NoError(t, r.err, r.prompt)
		assert.Equal(t, http.StatusOK, r.status, r.prompt)
		assert.Equal(t, llmtest.Reply(r.prompt), r.text, "full answer for %q", r.prompt)
		if r.stream {
			assert.True(t, r.done, "stream %q ended with [DONE]", r.prompt)
			assert.False(t, r.errEv, r.prompt)
		}
		assert.Equal(t, 1, srv.Completed(r.prompt), r.prompt)
	}
	require.Equal(t, 0, p.Wait(20*time.Second))
	assert.Contains(t, p.Output(proctest.Stderr), "shutdown complete")
	checkLogs(t, p)
}

func TestSecondSignalExitsAtOnce(t *testing.T) {
	srv, env := upstream(t)
	srv.Script(llmtest.Hang())
	p, addr := startServer(t, append(env, "DRAIN_DELAY=10s", "DRAIN_TIMEOUT=60s")...)

	res := make(chan result, 1)
	go func() { res <- generate(httpClient(t, false), addr, "never answered", false) }()
	proctest.Eventually(t, 5*time.Second, "call in flight upstream", func() bool { return srv.Stats().InFlight == 1 })

	p.Signal(syscall.SIGTERM)
	proctest.Eventually(t, 2*time.Second, "/readyz 503", func() bool {
		return get(httpClient(t, true), addr, "/readyz") == http.StatusServiceUnavailable
	})
	start := time.Now()
	p.Signal(syscall.SIGTERM)
	code := p.Wait(5 * time.Second)
	assert.NotZero(t, code)
	assert.Less(t, time.Since(start), 3*time.Second, "the second signal cuts the 10s delay and the drain")
	r := <-res
	assert.True(t, r.err != nil || r.status != http.StatusOK, "the cut request did not succeed: %+v", r)
	checkLogs(t, p)
}

// TestDrainTimeoutBoundsExit checks serversettings.ExitGrace, the number the
// Kubernetes budget relies on: a request that outlives DRAIN_TIMEOUT is cut
// and the process exits non-zero within DRAIN_TIMEOUT + ExitGrace.
func TestDrainTimeoutBoundsExit(t *testing.T) {
	const drainTimeout = 500 * time.Millisecond
	srv, env := upstream(t)
	srv.Script(llmtest.Hang())
	p, addr := startServer(t, append(env, "DRAIN_TIMEOUT="+drainTimeout.String())...)

	res := make(chan result, 1)
	go func() { res <- generate(httpClient(t, false), addr, "never answered", false) }()
	proctest.Eventually(t, 5*time.Second, "call in flight upstream", func() bool { return srv.Stats().InFlight == 1 })

	start := time.Now()
	p.Signal(syscall.SIGTERM)
	code := p.Wait(drainTimeout + serversettings.ExitGrace + 5*time.Second)
	took := time.Since(start)
	assert.Equal(t, 1, code)
	assert.GreaterOrEqual(t, took, drainTimeout)
	assert.Less(t, took, drainTimeout+serversettings.ExitGrace, "exit within DRAIN_TIMEOUT + ExitGrace")
	r := <-res
	assert.True(t, r.err != nil || r.status != http.StatusOK, "the cut request did not succeed: %+v", r)
	assert.Contains(t, p.Output(proctest.Stderr), "shutdown cut requests short")
	checkLogs(t, p)
}

func TestOfflineFakeLLM(t *testing.T) {
	p, addr := startServer(t, "FAKE_LLM_LATENCY=0s", "FAKE_LLM_CHUNK_DELAY=0s")
	c := httpClient(t, false)

	r := generate(c, addr, "hello there", false)
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, llmtest.Reply("hello there"), r.text)

	r = generate(c, addr, "hello again", true)
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, llmtest.Reply("hello again"), r.text)
	assert.True(t, r.done)

	for body, want := range map[string]int{`{"prompt": ""}`: 400, `not json`: 400, `{"prompt": 3}`: 400} {
		resp, err := c.Post("http://"+addr+"/v1/generate", "application/json", strings.NewReader(body))
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, want, resp.StatusCode, body)
	}
	assert.Equal(t, http.StatusMethodNotAllowed, get(c, addr, "/v1/generate"))
	c.CloseIdleConnections()

	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(10*time.Second))
	assert.Contains(t, p.Output(proctest.Stderr), "embedded fake LLM")
	checkLogs(t, p)
}

func TestUpstreamFaults(t *testing.T) {
	srv, env := upstream(t)
	p, addr := startServer(t, env...)
	c := httpClient(t, false)

	srv.Script(llmtest.RateLimitedMS(10 * time.Millisecond))
	r := generate(c, addr, "retried", false)
	assert.Equal(t, http.StatusOK, r.status, "a 429 upstream is retried")
	assert.Equal(t, llmtest.Reply("retried"), r.text)

	// An upstream that keeps saying 429 through every retry is passed on
	// as what it is, a 429 with a hint, for plain and streamed requests.
	for _, stream := range []bool{false, true} {
		prompt := fmt.Sprintf("refused, stream %v", stream)
		srv.Script(slices.Repeat([]llmtest.Fault{llmtest.RateLimitedMS(time.Millisecond)}, llmdrain.DefaultMaxRetries+1)...)
		r = generate(c, addr, prompt, stream)
		assert.Equal(t, http.StatusTooManyRequests, r.status, prompt)
		assert.Equal(t, "1", r.header.Get("Retry-After"), prompt)
		assert.Len(t, srv.History(prompt), llmdrain.DefaultMaxRetries+1, "%s: every retry was spent on the upstream", prompt)
	}

	srv.Script(llmtest.Truncate(2))
	r = generate(c, addr, "cut off after two words", true)
	require.NoError(t, r.err)
	assert.Equal(t, http.StatusOK, r.status)
	assert.True(t, r.errEv, "a cut-off upstream stream is relayed as an error event")
	assert.False(t, r.done, "and without [DONE]")
	assert.NotEqual(t, llmtest.Reply("cut off after two words"), r.text)

	srv.Script(llmtest.Status(400))
	r = generate(c, addr, "bad", false)
	assert.Equal(t, http.StatusBadRequest, r.status)

	srv.Script(llmtest.Status(401))
	r = generate(c, addr, "unauthorised", false)
	assert.Equal(t, http.StatusBadGateway, r.status)
	c.CloseIdleConnections()

	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(10*time.Second))
	checkLogs(t, p)
}
