package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/examples/internal/proctest"
	"github.com/llmdrain/llmdrain/llmtest"
)

// bin is the demo command, built once for all tests.
var bin string

func TestMain(m *testing.M) { proctest.Main(m, &bin) }

var summary = regexp.MustCompile(`(?m)^summary: (\d+) calls, (\d+) completed, (\d+) refused, (\d+) lost$`)

// counts reads the summary line.
func counts(t *testing.T, out string) (calls, completed, refused, lost int) {
	t.Helper()
	m := summary.FindStringSubmatch(out)
	require.NotNil(t, m, "no summary line")
	n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
	return n(1), n(2), n(3), n(4)
}

// TestDemo runs the demo as `go run ./examples/demo` would, output piped,
// and checks its account adds up.
func TestDemo(t *testing.T) {
	start := time.Now()
	p := proctest.Start(t, bin, nil)
	code := p.Wait(30 * time.Second)
	took := time.Since(start)
	out := p.Output(proctest.Stdout)

	require.Equal(t, 0, code, "exit code")
	calls, completed, refused, lost := counts(t, out)
	assert.Contains(t, out, "llmdrain demo, offline")
	assert.Equal(t, numCalls, calls)
	assert.Zero(t, lost)
	assert.Equal(t, calls, completed+refused, "every call completed or was refused")
	assert.Positive(t, completed)
	assert.Positive(t, refused)
	assert.Contains(t, out, "completed during the drain")
	assert.Contains(t, out, "nothing was lost")
	assert.Regexp(t, `SIGTERM at \d+\.\d+s with [1-9]\d* of them in flight`, out)
	assert.Contains(t, out, "answers checked against the fake LLMs' records: "+strconv.Itoa(completed)+" of "+strconv.Itoa(completed))
	assert.NotContains(t, out, "\x1b[", "no colour when piped")
	assert.Empty(t, p.Output(proctest.Stderr))
	assert.Less(t, took, 15*time.Second, "the demo must finish in under 15s")
}

const testKey = "sk-test-0123456789abcdef-secret"

// sentRequest is what the demo asked of the API in one chat request.
type sentRequest struct {
	Prompt    string
	Stream    bool
	MaxTokens int
}

// recorder is a reverse proxy in front of a fake LLM that notes every
// chat request the demo sends.
type recorder struct {
	mu   sync.Mutex
	reqs []sentRequest
}

func (rec *recorder) requests() []sentRequest {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]sentRequest(nil), rec.reqs...)
}

// online starts a fake LLM that requires key, standing in for the real
// endpoint, behind a recorder at base; env points the demo at it with
// testKey.
func online(t *testing.T, key string) (srv *llmtest.Server, rec *recorder, base string, env []string) {
	srv, _ = proctest.Upstream(t, key, llmtest.WithLatency(700*time.Millisecond), llmtest.WithChunkDelay(60*time.Millisecond))
	target, err := url.Parse(srv.URL)
	require.NoError(t, err)
	target.Path = ""
	tr := &http.Transport{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.Transport = tr
	rec = &recorder{}
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err == nil {
			var req struct {
				Messages []struct{ Content string }
				Stream   bool
				Max      int `json:"max_completion_tokens"`
			}
			if json.Unmarshal(body, &req) == nil && len(req.Messages) > 0 {
				rec.mu.Lock()
				rec.reqs = append(rec.reqs, sentRequest{req.Messages[len(req.Messages)-1].Content, req.Stream, req.Max})
				rec.mu.Unlock()
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		front.Close()
		tr.CloseIdleConnections()
	})
	base = front.URL + "/v1"
	return srv, rec, base, []string{"HOLYSHEEP_API_KEY=" + testKey, "HOLYSHEEP_BASE_URL=" + base}
}

// TestDemoOnline runs the demo with HOLYSHEEP_API_KEY set, as against the
// real endpoint, which a fake LLM requiring the key stands in for: a small
// burst, sent as it is, and an account that does not claim to have
// checked the answers.
func TestDemoOnline(t *testing.T) {
	srv, rec, base, env := online(t, testKey)
	p := proctest.Start(t, bin, env)
	code := p.Wait(30 * time.Second)
	out := p.Output(proctest.Stdout)

	require.Equal(t, 0, code, "exit code")
	calls, completed, refused, lost := counts(t, out)
	assert.Equal(t, onlineCalls, calls)
	assert.Equal(t, onlineCalls/2, completed, "the calls fired before SIGTERM, in flight at it, completed")
	assert.Equal(t, onlineCalls/2, refused, "the calls fired after it were refused")
	assert.Zero(t, lost)
	assert.Contains(t, out, "llmdrain demo, online")
	assert.Contains(t, out, "real, billed calls to "+base)
	assert.Regexp(t, `SIGTERM at \d+\.\d+s with 4 of them in flight`, out)
	assert.Contains(t, out, "answers not cross-checked")
	assert.NotContains(t, out, "checked against")
	assert.NotContains(t, out, "fake LLM", "no fake fallback online")
	assert.Contains(t, out, "nothing was lost")

	// Only the calls before the signal reached the API, once each, small.
	sent := rec.requests()
	require.Len(t, sent, onlineCalls/2)
	streams := 0
	for i, r := range sent {
		assert.Contains(t, onlinePrompts[:onlineCalls/2], r.Prompt, "request %d", i)
		assert.Equal(t, onlineMaxTokens, r.MaxTokens, "request %d asks for a short answer", i)
		if r.Stream {
			streams++
		}
	}
	assert.Equal(t, onlineCalls/4, streams, "half of them streaming")
	for _, prompt := range onlinePrompts[:onlineCalls/2] {
		assert.Equal(t, 1, srv.Completed(prompt), "%q answered in full", prompt)
		assert.Contains(t, out, llmtest.Reply(prompt)[:20], "the answer is quoted")
	}
	assert.Equal(t, onlineCalls/2, srv.Stats().Requests)

	assert.NotContains(t, out, testKey)
	assert.Empty(t, p.Output(proctest.Stderr))
}

// TestDemoOnlineFailure runs the online demo against an endpoint that
// rejects its key: the calls sent are reported lost, the exit code says
// so, and the key is printed nowhere.
func TestDemoOnlineFailure(t *testing.T) {
	_, _, _, env := online(t, "sk-another-key")
	p := proctest.Start(t, bin, env)
	code := p.Wait(30 * time.Second)
	out := p.Output(proctest.Stdout)

	assert.Equal(t, 1, code, "exit code")
	calls, completed, refused, lost := counts(t, out)
	assert.Equal(t, []int{onlineCalls, 0, onlineCalls / 2, onlineCalls / 2}, []int{calls, completed, refused, lost})
	assert.Contains(t, out, "401")
	assert.NotContains(t, out, "nothing was lost")
	assert.NotContains(t, out+p.Output(proctest.Stderr), testKey)
}

func TestUseColor(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	assert.False(t, useColor(w), "a pipe")

	tty, err := os.OpenFile("/dev/null", os.O_WRONLY, 0) // a character device, like a terminal
	require.NoError(t, err)
	defer tty.Close()
	t.Setenv("NO_COLOR", "")
	assert.True(t, useColor(tty))
	t.Setenv("NO_COLOR", "1")
	assert.False(t, useColor(tty), "NO_COLOR")

	p := newPrinter(w, true)
	assert.Equal(t, "\x1b[32mok\x1b[0m", p.paint(green, "ok"))
	assert.Equal(t, "ok", newPrinter(w, false).paint(green, "ok"))
}
