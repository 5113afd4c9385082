package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/examples/internal/proctest"
	"github.com/llmdrain/llmdrain/llmtest"
)

// The attacks below are what the internet and careless clients do to a
// service. Each ends with a SIGTERM: the drain must still be quick and
// clean, exit 0, whatever the attack left behind.

// podMemoryLimit is the container's memory limit in k8s/deployment.yaml.
const podMemoryLimit = 256 << 20

// post sends a generate request with body and returns the status, the
// decoded error message (if any) and the response header.
func post(t *testing.T, c *http.Client, addr, contentType, body string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/generate", strings.NewReader(body))
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var e errorResponse
	if resp.StatusCode != http.StatusOK {
		require.NoError(t, json.Unmarshal(b, &e), "error bodies are JSON: %q", b)
		assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	}
	return resp.StatusCode, e.Error, resp.Header
}

func TestStrictInput(t *testing.T) {
	srv, env := upstream(t)
	p, addr := startServer(t, append(env, "MAX_BODY_BYTES=1000", "MAX_OUTPUT_TOKENS=2", "ALLOWED_MODELS=gpt-4o,gpt-4o-mini")...)
	c := httpClient(t, false)
	const js = "application/json"
	for _, tc := range []struct {
		name, contentType, body string
		status                  int
		msg                     string
	}{
		{"trailing garbage", js, `{"prompt":"hi"}garbage`, 400, "data after the JSON object"},
		{"two objects", js, `{"prompt":"hi"} {"prompt":"again"}`, 400, "data after the JSON object"},
		{"unknown field", js, `{"prompt":"hi","strem":true}`, 400, `unknown field "strem"`},
		{"wrong type", js, `{"prompt":"hi","model":3}`, 400, `"model" must be a string`},
		{"not JSON", js, `not json`, 400, "syntax error at byte 2"},
		{"cut off", js, `{"prompt":"hi"`, 400, "ends in the middle"},
		{"empty", js, ``, 400, "empty"},
		{"no prompt", js, `{"prompt":"  "}`, 400, `"prompt" is required`},
		{"too large", js, `{"prompt":"` + strings.Repeat("a", 2000) + `"}`, 413, "larger than 1000 bytes"},
		{"not JSON content", "text/plain", `{"prompt":"hi"}`, 415, "Content-Type: application/json"},
		{"no content type", "", `{"prompt":"hi"}`, 415, "Content-Type: application/json"},
		{"model not allowed", js, `{"prompt":"hi","model":"gpt-5-ultra"}`, 400, `model "gpt-5-ultra" is not available here; use one of: gpt-4o, gpt-4o-mini`},
	} {
		status, msg, _ := post(t, c, addr, tc.contentType, tc.body)
		assert.Equal(t, tc.status, status, tc.name)
		assert.Contains(t, msg, tc.msg, tc.name)
		assert.NotContains(t, msg, "Go struct", tc.name)
		assert.NotContains(t, msg, "generateRequest", tc.name)
	}
	assert.Zero(t, srv.Stats().Requests, "no rejected request reached the LLM")

	// JSON for the router's own answers too.
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{http.MethodGet, "/nowhere", 404, ""},
		{http.MethodGet, "/v1/generate", 405, "POST"},
		{http.MethodPost, "/healthz", 405, "GET"},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, nil)
		resp, err := c.Do(req)
		require.NoError(t, err)
		var e errorResponse
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&e), "%s %s", tc.method, tc.path)
		resp.Body.Close()
		assert.Equal(t, tc.status, resp.StatusCode, "%s %s", tc.method, tc.path)
		assert.Equal(t, tc.allow, resp.Header.Get("Allow"), "%s %s", tc.method, tc.path)
		assert.NotEmpty(t, e.Error)
	}

	// The output cap reaches the LLM, and an allowed model is used.
	status, _, _ := post(t, c, addr, js, `{"prompt":"one two three four","model":"gpt-4o-mini"}`)
	assert.Equal(t, http.StatusOK, status)
	r := generate(c, addr, "five six seven", false)
	assert.Equal(t, "You said: ", r.text, "MAX_OUTPUT_TOKENS=2 cuts the answer after two words")
	c.CloseIdleConnections()
	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(10*time.Second))
	checkLogs(t, p)
}

// TestAdmissionBeforeBody: with every slot taken, a request is answered
// 503 with Retry-After from its headers alone, its body never read.
func TestAdmissionBeforeBody(t *testing.T) {
	srv, env := upstream(t)
	srv.Script(llmtest.Hang(), llmtest.Hang())
	p, addr := startServer(t, append(env, "MAX_IN_FLIGHT=2")...)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/v1/generate", strings.NewReader(fmt.Sprintf(`{"prompt":"hang %d"}`, i)))
			req.Header.Set("Content-Type", "application/json")
			if resp, err := httpClient(t, true).Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	proctest.Eventually(t, 10*time.Second, "both slots taken upstream", func() bool { return srv.Stats().InFlight == 2 })

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	// Headers promising a body that never comes.
	fmt.Fprintf(conn, "POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	require.NoError(t, err, "answered without the body")
	resp.Body.Close()
	assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	assert.Equal(t, "1", resp.Header.Get("Retry-After"))

	cancel()
	wg.Wait()
	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(10*time.Second))
}

// TestSlowBodiesCut: clients that send their body a byte at a time (or
// never) are cut at BODY_TIMEOUT, and do not hold the drain.
func TestSlowBodiesCut(t *testing.T) {
	_, env := upstream(t)
	p, addr := startServer(t, append(env, "BODY_TIMEOUT=300ms", "DRAIN_TIMEOUT=20s")...)
	const clients = 50
	statuses := make(chan int, clients)
	for range clients {
		go func() {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				statuses <- -1
				return
			}
			defer conn.Close()
			fmt.Fprintf(conn, "POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				statuses <- 0
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	for range clients {
		assert.Equal(t, http.StatusRequestTimeout, <-statuses)
	}
	start := time.Now()
	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(10*time.Second))
	assert.Less(t, time.Since(start), 5*time.Second, "nothing left to drain")
}

// TestChunkedClientHangUpCancelsCall: a client that sends its request
// chunked and goes away while the LLM works is noticed; its LLM call is
// cancelled, and the drain does not wait for it.
func TestChunkedClientHangUpCancelsCall(t *testing.T) {
	srv, env := upstream(t)
	srv.Script(llmtest.Hang())
	p, addr := startServer(t, append(env, "DRAIN_TIMEOUT=30s")...)
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	body := `{"prompt":"paid for by nobody"}`
	fmt.Fprintf(conn, "POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n", len(body), body)
	fmt.Fprintf(conn, "0\r\n\r\n")
	proctest.Eventually(t, 10*time.Second, "the call upstream", func() bool { return srv.Stats().InFlight == 1 })
	conn.Close()
	proctest.Eventually(t, 10*time.Second, "the call cancelled upstream", func() bool { return srv.Stats().InFlight == 0 })
	assert.Zero(t, srv.Stats().Succeeded)

	start := time.Now()
	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(10*time.Second))
	assert.Less(t, time.Since(start), 5*time.Second, "nothing left to drain")
	assert.Contains(t, p.Output(proctest.Stderr), `"status":499`, "the hang-up is logged as 499")
}

// TestStalledStreamReaderDropped: a client that stops reading a stream is
// dropped at WRITE_TIMEOUT and its LLM call cancelled, instead of pinning
// the handler and the call until the drain's deadline.
func TestStalledStreamReaderDropped(t *testing.T) {
	srv, env := upstream(t, llmtest.WithContextWindow(0))
	p, addr := startServer(t, append(env, "WRITE_TIMEOUT=300ms", "MAX_OUTPUT_TOKENS=1000000", "MAX_BODY_BYTES=2000000", "DRAIN_TIMEOUT=30s")...)
	// An answer longer than the socket buffers on both ends can hold
	// (several MB on loopback), and a client socket with a small receive
	// buffer that stops reading after the headers.
	prompt := strings.Repeat("word ", 300000)
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	defer conn.Close()
	body, _ := json.Marshal(generateRequest{Prompt: prompt, Stream: true})
	fmt.Fprintf(conn, "POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	br := bufio.NewReaderSize(conn, 512)
	line, err := br.ReadString('\n')
	require.NoError(t, err)
	require.Contains(t, line, "200 OK")
	// Now read no more.
	proctest.Eventually(t, 20*time.Second, "the stream's LLM call cancelled", func() bool {
		st := srv.Stats()
		return st.Requests == 1 && st.InFlight == 0
	})
	assert.Zero(t, srv.Stats().Succeeded)
	start := time.Now()
	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(10*time.Second))
	assert.Less(t, time.Since(start), 5*time.Second, "nothing left to drain")
	assert.Contains(t, p.Output(proctest.Stderr), "generate abandoned by the client")
}

// plainBinary builds the server without the race detector, whose shadow
// memory would make its footprint meaningless.
func plainBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	require.NoError(t, err)
	out := filepath.Join(t.TempDir(), "server")
	b, err := exec.Command(goTool, "build", "-o", out, ".").CombinedOutput()
	require.NoError(t, err, "%s", b)
	return out
}

// peakRSS is the high-water mark of a process's resident memory.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	require.NoError(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// TestMemoryBoundedUnderAttack drives the floods that took the server past
// its pod's memory limit: connections dribbling megabytes of headers, and
// hundreds of concurrent large prompts against a slow LLM; and, with the
// embedded fake LLM, streams echoing huge prompts. The server's peak RSS
// must stay under the limit, and it must still answer.
func TestMemoryBoundedUnderAttack(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	bin := plainBinary(t)
	srv, env := upstream(t, llmtest.WithLatency(2*time.Second))
	p := proctest.Start(t, bin, append(env, "ADDR=127.0.0.1:0"))
	addr := listenAddr(t, p)
	var wg sync.WaitGroup

	// 300 connections, each sending a megabyte of headers.
	header := strings.Repeat("x", 1<<10)
	for range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				return
			}
			defer conn.Close()
			fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
			for i := range 1024 {
				if _, err := fmt.Fprintf(conn, "X-Flood-%d: %s\r\n", i, header); err != nil {
					return // the server has answered 431 and closed
				}
			}
		}()
	}
	// 200 concurrent prompts of 200 KB, under the body limit.
	prompt := strings.Repeat("a ", 100<<10)
	statuses := make(chan int, 200)
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body, _ := json.Marshal(generateRequest{Prompt: prompt})
			resp, err := http.Post("http://"+addr+"/v1/generate", "application/json", bytes.NewReader(body))
			if err != nil {
				statuses <- 0
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(statuses)
	counts := map[int]int{}
	for s := range statuses {
		counts[s]++
	}
	// A request turned away is answered 503 before its body is read, and
	// the connection closed; a client still sending a large body may see
	// that close (status 0 here) before it reads the 503.
	t.Logf("large prompts: %v (0: connection closed after an early 503); upstream max in flight %d", counts, srv.Stats().MaxInFlight)
	assert.Equal(t, 200, counts[http.StatusOK]+counts[http.StatusServiceUnavailable]+counts[0], "each admitted or turned away: %v", counts)
	assert.NotZero(t, counts[http.StatusOK], "some were admitted")
	assert.LessOrEqual(t, srv.Stats().MaxInFlight, 64, "MAX_IN_FLIGHT bounds the LLM calls")
	assert.Equal(t, http.StatusOK, get(httpClient(t, true), addr, "/healthz"), "still answering")
	peak := peakRSS(t, p.Pid())
	t.Logf("peak RSS under header flood and large prompts: %d MiB (limit %d MiB)", peak>>20, podMemoryLimit>>20)
	assert.Less(t, peak, int64(podMemoryLimit))
	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(20*time.Second))

	// The embedded fake LLM, echoing five 900 KB prompts as streams.
	off := proctest.Start(t, bin, []string{"ADDR=127.0.0.1:0", "MAX_BODY_BYTES=1000000", "MAX_OUTPUT_TOKENS=10000000",
		"FAKE_LLM_LATENCY=0s", "FAKE_LLM_CHUNK_DELAY=0s", "FAKE_LLM_CONTEXT_WINDOW=0"})
	offAddr := listenAddr(t, off)
	big := strings.Repeat("b ", 450<<10)
	var streams sync.WaitGroup
	for i := range 5 {
		streams.Add(1)
		go func() {
			defer streams.Done()
			// Read the start of each answer, then hang up: an answer made
			// whole up front would already have taken its memory.
			body, _ := json.Marshal(generateRequest{Prompt: fmt.Sprintf("%d %s", i, big), Stream: true})
			resp, err := httpClient(t, true).Post("http://"+offAddr+"/v1/generate", "application/json", bytes.NewReader(body))
			if !assert.NoError(t, err) {
				return
			}
			defer resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			sc := bufio.NewScanner(resp.Body)
			for n := 0; n < 1000 && sc.Scan(); {
				if strings.HasPrefix(sc.Text(), "data: ") {
					n++
				}
			}
			assert.NoError(t, sc.Err())
		}()
	}
	streams.Wait()
	peak = peakRSS(t, off.Pid())
	t.Logf("peak RSS streaming five 900 KB echoes from the embedded fake LLM: %d MiB", peak>>20)
	assert.Less(t, peak, int64(podMemoryLimit))
	off.Signal(syscall.SIGTERM)
	require.Equal(t, 0, off.Wait(20*time.Second))
}
