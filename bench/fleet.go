package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
	"github.com/llmdrain/llmdrain/redisquota"
	"github.com/llmdrain/llmdrain/redisquota/redistest"
	"github.com/redis/go-redis/v9"
)

// fleetWorkerEnv makes the bench binary one replica of the fleet scenario:
// it reads a fleetSpec from the variable, makes its client, says "ready" on
// stdout, waits for a line on stdin, makes its calls and prints a
// fleetReport. Replicas are real processes, so nothing is shared between
// them but the provider and, with redisquota, Redis.
const fleetWorkerEnv = "LLMDRAIN_BENCH_FLEET_WORKER"

// fleetSpec is one replica's share of a fleet run.
type fleetSpec struct {
	URL    string // the provider's base URL
	Redis  string // Redis address; "" for the run without redisquota
	Prefix string // redisquota.Options.Prefix: a fresh bucket per run
	Calls  int    // calls this replica makes
	Conc   int    // at once
}

// fleetReport is what a replica prints when it is done.
type fleetReport struct {
	OK, Failed int
	Fallbacks  int    // Takes that found Redis unavailable: paced locally
	FirstErr   string `json:",omitempty"`
}

// countingQuota counts the Takes that failed, each an attempt the replica
// paced alone.
type countingQuota struct {
	llmdrain.Quota
	failed atomic.Int64
}

func (q *countingQuota) Take(ctx context.Context, key string, lim llmdrain.Limit, requests, tokens int) (time.Duration, error) {
	w, err := q.Quota.Take(ctx, key, lim, requests, tokens)
	if err != nil {
		q.failed.Add(1)
	}
	return w, err
}

// fleetParams sizes the fleet scenario.
type fleetParams struct {
	replicas int
	conc     int // callers in each replica
	calls    int // per replica
	quota    llmtest.RateLimit
	latency  time.Duration
}

// callTokens is what one chatRequest costs in llmtest's token bucket: the
// prompt "hello" and the reply "You said: hello".
const callTokens = 4

// idealCalls is how many calls the quota admits in wall: a full bucket at
// the start, then its rate, on whichever axis binds.
func (p fleetParams) idealCalls(wall time.Duration) float64 {
	period := p.quota.Period
	if period <= 0 {
		period = time.Minute
	}
	calls := float64(p.quota.RequestsPerMinute)
	if t := p.quota.TokensPerMinute; t > 0 && (calls == 0 || float64(t)/callTokens < calls) {
		calls = float64(t) / callTokens
	}
	return calls + calls*wall.Seconds()/period.Seconds()
}

// fleetRun is one run of the whole fleet.
type fleetRun struct {
	wall        time.Duration
	ok, failed  int
	requests    int // received by the provider
	rateLimited int // of which answered 429
	fallbacks   int // Takes that found Redis unavailable
	firstErr    string
}

func (r fleetRun) efficiency(p fleetParams) float64 {
	return float64(r.ok) / p.idealCalls(r.wall)
}

func (r fleetRun) share429() float64 {
	return float64(r.rateLimited) / float64(max(r.requests, 1))
}

func runFleet(rc runConfig) section {
	sec := section{title: "9. A fleet sharing one key"}
	p := fleetParams{
		replicas: 4, conc: 16, calls: 250, latency: 50 * time.Millisecond,
		quota: llmtest.RateLimit{RequestsPerMinute: 200, TokensPerMinute: 200 * callTokens * 2, Period: 5 * time.Second, Headers: true, Hints: true},
	}
	reps := min(rc.reps, 2)
	if rc.quick {
		p.calls, p.conc = 30, 8
		p.quota.RequestsPerMinute, p.quota.TokensPerMinute, p.quota.Period = 40, 40*callTokens*2, time.Second
		reps = 1
	}
	srv, err := redistest.Start()
	if errors.Is(err, redistest.ErrNotInstalled) {
		sec.skipped = "redis-server not installed (apt-get install redis-server)"
		return sec
	}
	if err != nil {
		sec.broken = append(sec.broken, err.Error())
		return sec
	}
	defer srv.Close()

	modes := []struct{ name, redis string }{
		{"llmdrain + redisquota", srv.Addr},
		{"llmdrain, each replica alone", ""},
	}
	runs := make([][]fleetRun, len(modes))
	for rep := range reps {
		for i, m := range modes {
			rc.progress("fleet: %s, repetition %d", m.name, rep+1)
			r, err := fleet(p, m.redis, fmt.Sprintf("bench:%d:%d:", rep, i))
			if err != nil {
				sec.broken = append(sec.broken, fmt.Sprintf("%s: %v", m.name, err))
				return sec
			}
			if r.failed > 0 {
				sec.notes = append(sec.notes, fmt.Sprintf("%s: %d calls failed, the first with: %s", m.name, r.failed, r.firstErr))
			}
			runs[i] = append(runs[i], r)
		}
	}

	detail := table{head: []string{"Fleet", "Calls succeeded", "Wall time (ideal for them)", "Share of ideal throughput", "Requests answered 429", "Takes paced locally (Redis too slow)"}}
	var eff, sh, fail [2]float64
	for i, m := range modes {
		var es, ss, fs []float64
		for _, r := range runs[i] {
			es = append(es, r.efficiency(p))
			ss = append(ss, r.share429())
			fs = append(fs, float64(r.failed)/float64(p.replicas*p.calls))
			ideal := time.Duration(float64(r.wall) * float64(r.ok) / p.idealCalls(r.wall))
			detail.add(m.name, fmt.Sprintf("%d of %d", r.ok, p.replicas*p.calls), fmt.Sprintf("%s (%s)", fmtDur(r.wall), fmtDur(ideal)),
				fmt.Sprintf("%.1f %%", 100*r.efficiency(p)), fmt.Sprintf("%.1f %% (%d of %d)", 100*r.share429(), r.rateLimited, r.requests), fmt.Sprint(r.fallbacks))
		}
		eff[i], sh[i], fail[i] = median(es), median(ss), median(fs)
	}
	met := "no"
	if eff[0] >= 0.95 && sh[0] <= 0.02 {
		met = "yes"
	}
	sec.addRow("9", fmt.Sprintf("%d replicas × %d callers sharing a key: share of the quota's ideal throughput, 429s", p.replicas, p.conc),
		fmt.Sprintf("%.1f %%, %.1f %% 429s, %.0f %% of calls failed", 100*eff[0], 100*sh[0], 100*fail[0]),
		fmt.Sprintf("%.1f %%, %.1f %% 429s, %.0f %% of calls failed, without redisquota", 100*eff[1], 100*sh[1], 100*fail[1]),
		"—", "≥ 95 %, ≤ 2 % 429s", met)
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("%d replicas, each a separate process (the bench binary re-executed) with its own llmdrain.Client of MaxConcurrent %d and %d callers making %d calls in all, start together against one llmtest server metering %d requests and %d tokens per %v (x-ratelimit-* headers on every answer, retry-after-ms on 429s), %v latency. With redisquota every replica draws from one bucket in a real redis-server; without it each paces from the headers alone.",
			p.replicas, p.conc, p.conc, p.calls, p.quota.RequestsPerMinute, p.quota.TokensPerMinute, p.quota.Period, p.latency),
		"Ideal throughput: the quota's full bucket at the start plus its rate over the fleet's wall time, on whichever axis binds; the share is calls succeeded over that (so calls that failed fast, cut by the retry budget or out of retries, do not lower it: see the failed share). 429s are the provider's count over every request it received.",
		"The first wave, sent before any answer told the limit, is charged to the shared bucket when the answers come (without that, measured: 5.8 % 429s, the 62 requests of the four first waves the bucket did not know of). Each replica asks Redis for a key one Take at a time and remembers a refusal until it expires, so its callers waiting on an empty bucket cost one round trip, not one each (without that, measured: 26 Redis calls per call, and a Redis stall past the 100 ms timeout on this loaded machine sent one replica to local pacing for a second: 7–23 % 429s).")
	return sec
}

// fleet runs one fleet: replicas started together against a fresh
// provider, through Redis at redisAddr or alone.
func fleet(p fleetParams, redisAddr, prefix string) (fleetRun, error) {
	up := llmtest.NewServer(llmtest.WithRateLimit(p.quota), llmtest.WithLatency(p.latency))
	defer up.Close()
	self, err := os.Executable()
	if err != nil {
		return fleetRun{}, err
	}
	type worker struct {
		cmd *exec.Cmd
		in  io.WriteCloser
		out *bufio.Reader
	}
	ws := make([]worker, 0, p.replicas)
	defer func() {
		for _, w := range ws {
			w.cmd.Process.Kill() // no-op once it has exited
			w.cmd.Wait()
		}
	}()
	for range p.replicas {
		spec, _ := json.Marshal(fleetSpec{URL: up.URL, Redis: redisAddr, Prefix: prefix, Calls: p.calls, Conc: p.conc})
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), fleetWorkerEnv+"="+string(spec))
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = childProcAttr()
		in, err := cmd.StdinPipe()
		if err != nil {
			return fleetRun{}, err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return fleetRun{}, err
		}
		if err := cmd.Start(); err != nil {
			return fleetRun{}, err
		}
		ws = append(ws, worker{cmd, in, bufio.NewReader(out)})
	}
	for _, w := range ws {
		if line, err := w.out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
			return fleetRun{}, fmt.Errorf("replica not ready: %q, %v", line, err)
		}
	}
	start := time.Now()
	for _, w := range ws {
		if _, err := io.WriteString(w.in, "go\n"); err != nil {
			return fleetRun{}, err
		}
	}
	var r fleetRun
	for _, w := range ws {
		line, err := w.out.ReadString('\n')
		var rep fleetReport
		if err != nil || json.Unmarshal([]byte(line), &rep) != nil {
			return fleetRun{}, fmt.Errorf("replica report: %q, %v", line, err)
		}
		r.ok += rep.OK
		r.failed += rep.Failed
		r.fallbacks += rep.Fallbacks
		if r.firstErr == "" {
			r.firstErr = rep.FirstErr
		}
	}
	r.wall = time.Since(start)
	st := up.Stats()
	r.requests, r.rateLimited = st.Requests, st.RateLimited
	return r, nil
}

// fleetWorker is a replica's work.
func fleetWorker(specJSON string) {
	var spec fleetSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		panic(err)
	}
	cfg := llmdrain.Config{MaxConcurrent: spec.Conc}
	var (
		rdb     *redis.Client
		counted *countingQuota
	)
	if spec.Redis != "" {
		rdb = redis.NewClient(&redis.Options{Addr: spec.Redis})
		defer rdb.Close()
		q, err := redisquota.New(rdb, redisquota.Options{Prefix: spec.Prefix})
		if err != nil {
			panic(err)
		}
		counted = &countingQuota{Quota: q}
		cfg.Quota = counted
	}
	c, client := llmdrainClient("replica", spec.URL, cfg)
	defer c.close()
	fmt.Println("ready")
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		os.Exit(1) // the parent went away
	}
	o := closedLoop(c, spec.Calls, spec.Conc)
	_ = client.Shutdown(context.Background())
	rep := fleetReport{OK: o.ok, Failed: o.calls - o.ok}
	if counted != nil {
		rep.Fallbacks = int(counted.failed.Load())
	}
	if o.firstErr != nil {
		rep.FirstErr = o.firstErr.Error()
	}
	b, _ := json.Marshal(rep)
	fmt.Println(string(b))
}
