package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/examples/internal/proctest"
	"github.com/llmdrain/llmdrain/llmtest"
)

// TestPrometheusScrape runs the server with METRICS_ADDR under a real
// Prometheus (the Debian package), which scrapes it every 250 ms while
// traffic runs and a SIGTERM drains it, and asks Prometheus, through its
// HTTP query API, whether the series tell the truth: calls were seen in
// flight and are back to 0, one clean drain is recorded, and the tokens
// add up to what the fake LLM billed.
func TestPrometheusScrape(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Prometheus for several seconds; skipped with -short")
	}
	promBin := findPrometheus(t)
	llm, env := upstream(t, llmtest.WithLatency(200*time.Millisecond), llmtest.WithChunkDelay(20*time.Millisecond))
	p := proctest.Start(t, bin, append(env, "ADDR=127.0.0.1:0", "METRICS_ADDR=127.0.0.1:0",
		"METRICS_LINGER=3s", "DRAIN_TIMEOUT=30s"))
	addr := listenAddr(t, p)
	metricsAddr := logAddr(t, p, "serving metrics")

	prom := startPrometheus(t, promBin, metricsAddr)
	prom.waitFor(t, "Prometheus to scrape the server", `up{job="llmdrain"}`, func(v float64) bool { return v == 1 })

	// Workers send requests, plain and streamed, until one is refused
	// after the SIGTERM; each must succeed until then.
	var (
		wg        sync.WaitGroup
		signalled atomic.Bool
		succeeded atomic.Int64
	)
	hc := httpClient(t, false)
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				res := generate(hc, addr, fmt.Sprintf("worker %d request %d", w, i), i%2 == 1)
				ok := res.err == nil && res.status == http.StatusOK && (!res.stream || res.done)
				if !ok {
					if !signalled.Load() {
						t.Errorf("request failed before the SIGTERM: %+v", res)
					}
					return
				}
				succeeded.Add(1)
			}
		}()
	}
	// Enough traffic for several scrapes, plain calls and streams, then
	// the SIGTERM while calls are in flight.
	proctest.Eventually(t, 30*time.Second, "30 answers", func() bool { return succeeded.Load() >= 30 })
	prom.waitFor(t, "Prometheus to see calls in flight", `sum(max_over_time(llmdrain_client_calls_in_flight[1m]))`,
		func(v float64) bool { return v > 0 })
	signalled.Store(true)
	p.Signal(syscall.SIGTERM)
	wg.Wait()
	require.Equal(t, 0, p.Wait(60*time.Second), "a clean drain")
	st := llm.Stats()
	require.Positive(t, st.Streams)

	require.Equal(t, int(succeeded.Load()), st.Succeeded, "every request the server answered is one the fake LLM answered")
	require.Zero(t, st.InFlight)
	// The process is gone: its series are stale, so ask for the last
	// value each had, from the scrapes made while /metrics lingered.
	last := func(sel string) string { return `sum(last_over_time(` + sel + `[5m]))` }
	for _, c := range []struct {
		what, expr string
		want       float64
	}{
		{"calls in flight, back to 0", last(`llmdrain_client_calls_in_flight`), 0},
		{"one clean drain", last(`llmdrain_drain_duration_seconds_count{llmdrain_drain_forced="false"}`), 1},
		{"no forced drain", `count(last_over_time(llmdrain_drain_duration_seconds_count{llmdrain_drain_forced="true"}[5m])) or vector(0)`, 0},
		{"no call cut by the drain", last(`llmdrain_drain_forced_calls_total`), 0},
		{"every call", last(`gen_ai_client_operation_duration_seconds_count`), float64(st.Succeeded)},
		{"no failed call", `count(last_over_time(gen_ai_client_operation_duration_seconds_count{error_type!=""}[5m])) or vector(0)`, 0},
		{"the streams' first chunks", last(`gen_ai_client_operation_time_to_first_chunk_seconds_count`), float64(st.Streams)},
		{"input tokens as billed", last(`gen_ai_client_token_usage_sum{gen_ai_token_type="input"}`), float64(st.PromptTokens)},
		{"output tokens as billed", last(`gen_ai_client_token_usage_sum{gen_ai_token_type="output"}`), float64(st.CompletionTokens)},
	} {
		prom.waitFor(t, c.what, c.expr, func(v float64) bool { return v == c.want })
	}
	// Every query of the Grafana dashboard is one Prometheus accepts.
	for _, q := range dashboardQueries(t) {
		assert.NoError(t, prom.valid(strings.ReplaceAll(q, "$__rate_interval", "1m")), "dashboard query %s", q)
	}
	t.Logf("%d calls, %d streamed, %d input and %d output tokens, as Prometheus and the fake LLM both count them",
		st.Succeeded, st.Streams, st.PromptTokens, st.CompletionTokens)
}

// findPrometheus returns the path of the prometheus binary. Without one,
// the test is skipped, or fails under CI=true (.ci/run installs it).
func findPrometheus(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("prometheus"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/bin/prometheus"); err == nil {
		return "/usr/bin/prometheus"
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("prometheus is not installed (apt-get install prometheus); CI must run this test")
	}
	t.Skip("prometheus is not installed (apt-get install prometheus)")
	return ""
}

// logAddr waits for the server's log line msg and returns its addr.
func logAddr(t *testing.T, p *proctest.Proc, msg string) string {
	t.Helper()
	var addr string
	p.WaitLine(proctest.Stderr, 10*time.Second, "the "+msg+" log line", func(l string) bool {
		var rec struct{ Msg, Addr string }
		if json.Unmarshal([]byte(l), &rec) == nil && rec.Msg == msg {
			addr = rec.Addr
			return true
		}
		return false
	})
	return addr
}

// promServer is a running Prometheus server's query API.
type promServer struct {
	url    string
	client *http.Client
}

// startPrometheus runs Prometheus scraping target's /metrics every 250 ms,
// on loopback, with its storage in a temporary directory, and waits until
// it is ready.
func startPrometheus(t *testing.T, promBin, target string) *promServer {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf(`global:
  scrape_interval: 250ms
  scrape_timeout: 200ms
scrape_configs:
  - job_name: llmdrain
    static_configs:
      - targets: [%q]
`, target)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o600))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	listen := ln.Addr().String()
	require.NoError(t, ln.Close()) // Prometheus takes the port next; a clash fails the readiness wait
	proctest.Start(t, promBin, nil,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+listen,
		"--log.level=warn")
	prom := &promServer{url: "http://" + listen, client: httpClient(t, false)}
	proctest.Eventually(t, 30*time.Second, "Prometheus ready", func() bool {
		resp, err := prom.client.Get(prom.url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return prom
}

// query runs an instant query whose result is one number; ok is false if
// it has no result (yet).
func (p *promServer) query(expr string) (v float64, ok bool, err error) {
	resp, err := p.client.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	var out struct {
		Status string
		Error  string
		Data   struct {
			ResultType string
			Result     []struct {
				Value [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, false, err
	}
	if out.Status != "success" {
		return 0, false, fmt.Errorf("query %s: %s", expr, out.Error)
	}
	switch len(out.Data.Result) {
	case 0:
		return 0, false, nil
	case 1:
		s, _ := out.Data.Result[0].Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		return v, err == nil, err
	default:
		return 0, false, fmt.Errorf("query %s: %d series, want one number", expr, len(out.Data.Result))
	}
}

// valid runs the query and returns Prometheus' error, if any.
func (p *promServer) valid(expr string) error {
	resp, err := p.client.Get(p.url + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var out struct{ Status, Error string }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return err
	}
	if out.Status != "success" {
		return fmt.Errorf("%s: %s", out.Status, out.Error)
	}
	return nil
}

// waitFor polls the query until its number satisfies ok, and fails the
// test, with the last number seen, if that takes longer than 30 s.
func (p *promServer) waitFor(t *testing.T, what, expr string, ok func(float64) bool) {
	t.Helper()
	var (
		last    float64
		has     bool
		lastErr error
	)
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, found, err := p.query(expr)
		if err == nil && found && ok(v) {
			return
		}
		last, has, lastErr = v, found, err
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	switch {
	case lastErr != nil:
		assert.Fail(t, what, "%v", lastErr)
	case !has:
		assert.Fail(t, what, "%s: no result within 30s", expr)
	default:
		assert.Fail(t, what, "%s = %v within 30s", expr, last)
	}
}
