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

// fleetParams sizes the fleet scenario: the rate-limit scenario's
// provider and load, split between replicas.
type fleetParams struct {
	rlParams // n and conc are the fleet's, in all
	replicas int
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

// efficiency is the share of what the quota admitted during the run that
// went to calls that succeeded, as in the rate-limit scenario.
func (r fleetRun) efficiency(p fleetParams) float64 {
	return min(float64(r.ok)/rlAdmitted(p.rlParams, r.wall), 1)
}

func (r fleetRun) share429() float64 {
	return float64(r.rateLimited) / float64(max(r.requests, 1))
}

func runFleet(rc runConfig) section {
	sec := section{title: "10. A fleet sharing one key"}
	// Section 8's provider and load, split between four replicas.
	p := fleetParams{replicas: 4, rlParams: rlParams{requests: 200, period: 5 * time.Second, latency: 200 * time.Millisecond, n: 720, conc: 64}}
	reps := min(rc.reps, 2)
	if rc.quick {
		p.rlParams = rlParams{requests: 40, period: 2 * time.Second, latency: 100 * time.Millisecond, n: 80, conc: 32}
		reps = 1
	}
	p.tokens = p.requests * rlCost() * 9 / 10
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
			r, err := fleet(p, m.redis, fmt.Sprintf("bench:%d:%d:", rep, i))
			if err != nil {
				sec.broken = append(sec.broken, fmt.Sprintf("%s: %v", m.name, err))
				return sec
			}
			rc.progress("fleet: %s: %d/%d ok in %v, %d requests, %d 429s, %d Takes paced locally", m.name, r.ok, p.n, r.wall.Round(time.Millisecond), r.requests, r.rateLimited, r.fallbacks)
			if r.failed > 0 {
				sec.notes = append(sec.notes, fmt.Sprintf("%s: %d calls failed, the first with: %s", m.name, r.failed, r.firstErr))
			}
			runs[i] = append(runs[i], r)
		}
	}

	detail := table{head: []string{"Fleet", "Calls ok", "Wall time (ideal)", "Throughput (of ideal)", "Requests answered 429", "Takes paced locally"}}
	var eff, sh, fail [2]float64
	for i, m := range modes {
		var es, ss, fs []float64
		for _, r := range runs[i] {
			es = append(es, r.efficiency(p))
			ss = append(ss, r.share429())
			fs = append(fs, float64(r.failed)/float64(p.n))
			detail.add(m.name, fmt.Sprintf("%d of %d", r.ok, p.n), fmt.Sprintf("%s (%s)", fmtDur(r.wall), fmtDur(rlIdeal(p.rlParams, p.n))),
				pct(r.efficiency(p)), fmt.Sprintf("%s (%d of %d)", pct(r.share429()), r.rateLimited, r.requests), fmt.Sprint(r.fallbacks))
		}
		eff[i], sh[i], fail[i] = median(es), median(ss), median(fs)
	}
	sec.addRow("10", fmt.Sprintf("Rate limit, %d processes sharing the key through redisquota: throughput of ideal; share of requests answered 429", p.replicas),
		fmt.Sprintf("%s; %s", pct(eff[0]), pct(sh[0])),
		fmt.Sprintf("without redisquota: %s; %s, and %s of calls failed", pct(eff[1]), pct(sh[1]), pct(fail[1])),
		"—", "≥ 95 %; ≤ 2 %", verdict(eff[0] >= 0.95 && sh[0] <= 0.02))
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("Section 8's provider (%d requests and %d tokens per %v, x-ratelimit-* headers on every answer, retry-after-ms on 429s, %v latency) and load (%d callers making %d calls), split between %d replicas started together, each a separate process (the bench binary re-executed) with its own llmdrain.Client (defaults, MaxConcurrent %d) and %d callers. With redisquota every replica draws from one bucket in a real redis-server (redisquota's defaults: 100 ms timeout, 1 s cooldown); without it each paces from the headers alone. Median of %d runs each.",
			p.requests, p.tokens, p.period, p.latency, p.conc, p.n, p.replicas, p.conc/p.replicas, p.conc/p.replicas, reps),
		"Throughput and 429s as in section 8, for the fleet together. Takes paced locally: draws that found Redis slower than its timeout (or a draw of the same key ahead of them held up past twice it) and went ahead on the replica's own pacing.",
		"The first attempts, sent before any answer told the limit, are charged to the shared bucket when their answers come; without that (measured on a 200-request, 5 s bucket at 50 ms latency): 5.8 % 429s, the 62 requests of the four replicas' first waves of 16 that the bucket did not know of. Each replica asks Redis for a key one draw at a time and remembers a refusal until it expires, so callers waiting on an empty bucket cost one round trip between them; without that: 26 Redis calls per call, and a Redis round trip past 100 ms on this loaded machine sent replicas to local pacing, 8–23 % 429s.")
	return sec
}

func fleet(p fleetParams, redisAddr, prefix string) (fleetRun, error) {
	up := rlServer(p.rlParams, true)
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
		spec, _ := json.Marshal(fleetSpec{URL: up.URL, Redis: redisAddr, Prefix: prefix, Calls: p.n / p.replicas, Conc: p.conc / p.replicas})
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
