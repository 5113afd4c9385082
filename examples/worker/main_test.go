package main

import (
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/examples/internal/proctest"
	"github.com/llmdrain/llmdrain/llmtest"
)

// bin is the worker command, built once for all tests.
var bin string

func TestMain(m *testing.M) { proctest.Main(m, &bin) }

const testKey = "sk-test-0123456789abcdef-secret"

// logLine is a JSON log line of the worker.
type logLine struct {
	Level, Msg, Drain, Error, Addr string
	Job                            int
	OK                             *bool
}

func parse(l string) (logLine, bool) {
	var rec logLine
	return rec, json.Unmarshal([]byte(l), &rec) == nil
}

// start runs the worker against a fake LLM requiring testKey, a job every
// 50 ms, and returns it with its address once it listens.
func start(t *testing.T, srv []string, env ...string) (*proctest.Proc, string) {
	p := proctest.Start(t, bin, append(append(srv, "ADDR=127.0.0.1:0", "JOB_INTERVAL=50ms"), env...))
	var addr string
	p.WaitLine(proctest.Stderr, 10*time.Second, "the listening line", func(l string) bool {
		rec, ok := parse(l)
		addr = rec.Addr
		return ok && rec.Msg == "listening"
	})
	return p, addr
}

// find returns the log lines with message msg.
func find(p *proctest.Proc, msg string) []logLine {
	var out []logLine
	for _, l := range p.Lines(proctest.Stderr) {
		if rec, ok := parse(l); ok && rec.Msg == msg {
			out = append(out, rec)
		}
	}
	return out
}

func checkLogs(t *testing.T, p *proctest.Proc) {
	t.Helper()
	for _, l := range p.Lines(proctest.Stderr) {
		assert.True(t, json.Valid([]byte(l)), "log line is not JSON: %s", l)
	}
	assert.NotContains(t, p.Output(proctest.Stderr), testKey)
	assert.NotContains(t, p.Output(proctest.Stdout), testKey)
}

func waitLog(t *testing.T, p *proctest.Proc, msg string) logLine {
	t.Helper()
	var rec logLine
	p.WaitLine(proctest.Stderr, 10*time.Second, msg, func(l string) bool {
		r, ok := parse(l)
		rec = r
		return ok && r.Msg == msg
	})
	return rec
}

// TestSIGTERMDrainsWorkerJob: the worker's job in flight when SIGTERM
// arrives finishes (its call's context outlives the service's
// NotifyContext), no new job starts, and the process exits 0.
func TestSIGTERMDrainsWorkerJob(t *testing.T) {
	srv, env := proctest.Upstream(t, testKey, llmtest.WithLatency(time.Second))
	p, _ := start(t, env)
	waitLog(t, p, "worker: job started")
	proctest.Eventually(t, 5*time.Second, "the job's call upstream", func() bool { return srv.Stats().InFlight == 1 })

	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(20*time.Second))
	assert.Equal(t, "job 1: "+llmtest.Reply("Summarise report #1")+"\n", p.Output(proctest.Stdout))
	assert.Equal(t, 1, srv.Completed("Summarise report #1"))
	assert.Len(t, find(p, "worker: job started"), 1, "no job after the signal")
	assert.Len(t, find(p, "worker: stopping, no new job"), 1)
	done := find(p, "shutdown: done")
	require.Len(t, done, 1)
	assert.Equal(t, "INFO", done[0].Level)
	require.NotNil(t, done[0].OK)
	assert.True(t, *done[0].OK)
	assert.Empty(t, find(p, "shutdown: second signal, forcing"), "the one SIGTERM, seen by NotifyContext and Shutdown, counts once")
	for _, drain := range []string{"http", "worker", "llm"} {
		found := false
		for _, rec := range find(p, "shutdown: drained") {
			found = found || rec.Drain == drain
		}
		assert.True(t, found, "drain %s", drain)
	}
	checkLogs(t, p)
}

// TestSecondSIGTERMCutsWorkerJob: a second SIGTERM cuts the job's call,
// which says why, and the process exits 1 with the failure at ERROR.
func TestSecondSIGTERMCutsWorkerJob(t *testing.T) {
	srv, env := proctest.Upstream(t, testKey)
	srv.Script(llmtest.Hang())
	p, _ := start(t, env)
	waitLog(t, p, "worker: job started")
	proctest.Eventually(t, 5*time.Second, "the job's call upstream", func() bool { return srv.Stats().InFlight == 1 })

	p.Signal(syscall.SIGTERM)
	waitLog(t, p, "shutdown: drained") // the http drain: the worker's is waiting
	p.Signal(syscall.SIGTERM)
	require.Equal(t, 1, p.Wait(10*time.Second))
	failed := waitLog(t, p, "worker: job failed")
	assert.Equal(t, "ERROR", failed.Level)
	assert.Contains(t, failed.Error, "llmdrain: forced shutdown, call cancelled by a second signal")
	forcing := find(p, "shutdown: second signal, forcing")
	require.Len(t, forcing, 1)
	assert.Equal(t, "WARN", forcing[0].Level)
	done := find(p, "shutdown: done")
	require.Len(t, done, 1)
	assert.Equal(t, "ERROR", done[0].Level)
	assert.Empty(t, p.Output(proctest.Stdout))
	checkLogs(t, p)
}

// TestHTTPDrainLeavesWorkerItsShare: a request that hangs holds the HTTP
// drain; with DRAIN_TIMEOUT 3s and LLM_RESERVE 2s it is cut after 1 s, and
// the worker's job, which takes 2 s, still finishes within its reserve.
func TestHTTPDrainLeavesWorkerItsShare(t *testing.T) {
	srv, env := proctest.Upstream(t, testKey)
	srv.Script(llmtest.Delay(2*time.Second), llmtest.Hang()) // the job's call, then the request's
	p, addr := start(t, env, "DRAIN_TIMEOUT=3s", "LLM_RESERVE=2s")
	waitLog(t, p, "worker: job started")
	proctest.Eventually(t, 5*time.Second, "the job's call upstream", func() bool { return srv.Stats().InFlight == 1 })
	asked := make(chan struct{})
	go func() {
		defer close(asked)
		resp, err := http.Post("http://"+addr+"/v1/ask", "text/plain", strings.NewReader("hang"))
		if err == nil {
			resp.Body.Close()
		}
	}()
	proctest.Eventually(t, 5*time.Second, "the request's call upstream", func() bool { return srv.Stats().InFlight == 2 })

	start := time.Now()
	p.Signal(syscall.SIGTERM)
	code := p.Wait(20 * time.Second)
	took := time.Since(start)
	<-asked
	assert.Equal(t, 1, code, "the request was cut")
	assert.Less(t, took, 3*time.Second+3*time.Second, "bounded by DRAIN_TIMEOUT and the grace")
	assert.Equal(t, "job 1: "+llmtest.Reply("Summarise report #1")+"\n", p.Output(proctest.Stdout), "the job finished")
	spent := find(p, "shutdown: drain's share of the timeout spent, forcing it")
	require.Len(t, spent, 1)
	assert.Equal(t, "http", spent[0].Drain)
	assert.Equal(t, "WARN", spent[0].Level)
	for _, rec := range find(p, "shutdown: drain failed") {
		assert.Equal(t, "http", rec.Drain, "only the inbound drain failed")
		assert.Equal(t, "ERROR", rec.Level)
	}
	drained := map[string]bool{}
	for _, rec := range find(p, "shutdown: drained") {
		drained[rec.Drain] = true
	}
	assert.True(t, drained["worker"] && drained["llm"], "the worker and LLM drains succeeded: %v", drained)
	checkLogs(t, p)
}
