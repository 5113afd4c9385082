package main

import (
	"fmt"
	"math"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

// stormParams sizes the 429 storm.
type stormParams struct {
	rate  float64 // requests per second the API admits
	burst float64
	n     int // calls
	conc  int // callers at once
}

// stormResult is one contender's run under one hint mode.
type stormResult struct {
	name     string
	o        outcome
	requests int64
	refused  int64
}

func (r stormResult) perSuccess() float64 {
	if r.o.ok == 0 {
		return math.Inf(1)
	}
	return float64(r.requests) / float64(r.o.ok)
}

// storm runs n calls at concurrency conc through a fresh client made by
// mk, against a fresh token bucket in front of upstream.
func storm(upstream string, p stormParams, hint hintMode, mk func(baseURL string) caller) stormResult {
	tb := newTokenBucket(p.rate, p.burst, hint, time.Now())
	g := newGate(upstream, tb.policy)
	srv, url := serve(g)
	defer func() {
		srv.Close()
		g.transp.CloseIdleConnections()
	}()
	c := mk(v1(url))
	defer c.close()
	o := closedLoop(c, p.n, p.conc)
	return stormResult{name: c.name, o: o, requests: g.requests.Load(), refused: g.refused.Load()}
}

// stormCase is one storm: its size, and the hints the API sends in it.
type stormCase struct {
	name  string
	p     stormParams
	modes []hintMode
}

func runStorm(rc runConfig) section {
	// The short storm ends within llmdrain's retry budget (four attempts,
	// three waits of a second under Retry-After: 1); the long one outlasts
	// it, so that no client can win by retry count alone.
	cases := []stormCase{
		{"short", stormParams{rate: 50, burst: 50, n: 200, conc: 100}, []hintMode{hintSeconds, hintMillis, hintNone}},
		{"long", stormParams{rate: 50, burst: 50, n: 400, conc: 100}, []hintMode{hintSeconds, hintNone}},
	}
	reps := min(rc.reps, 2)
	if rc.quick {
		cases = []stormCase{{"short", stormParams{rate: 20, burst: 20, n: 40, conc: 40}, []hintMode{hintSeconds, hintMillis}}}
		reps = 1
	}
	up := llmtest.NewServer()
	defer up.Close()

	makers := []func(string) caller{
		func(u string) caller { c, _ := llmdrainClient("llmdrain (defaults)", u, llmdrain.Config{}); return c },
		openAIGo,
		bareGoOpenAI,
	}
	sec := section{title: "4. Goodput under a 429 storm"}
	detail := table{head: []string{"Storm", "Hint", "Client", "Success (median, min–max)", "Requests per success", "Wall time (ideal)", "p99 latency of successes"}}
	for _, sc := range cases {
		p := sc.p
		// res[mode][contender] holds one result per repetition.
		res := make([][][]stormResult, len(sc.modes))
		for m := range sc.modes {
			res[m] = make([][]stormResult, len(makers))
		}
		for r := range reps {
			for m, mode := range sc.modes {
				for k := range makers {
					i := (k + r) % len(makers)
					sr := storm(up.URL, p, mode, makers[i])
					rc.progress("storm %s rep %d/%d, %s: %s: %d/%d ok, %d requests, %v", sc.name, r+1, reps, mode, sr.name, sr.o.ok, sr.o.calls, sr.requests, sr.o.wall.Round(time.Millisecond))
					res[m][i] = append(res[m][i], sr)
				}
			}
		}
		ideal := time.Duration(math.Max(0, float64(p.n)-p.burst) / p.rate * float64(time.Second))
		storm := fmt.Sprintf("%s: %d calls, concurrency %d", sc.name, p.n, p.conc)
		for m, mode := range sc.modes {
			type agg struct {
				name               string
				ok, lo, hi         float64
				perSucc, wall, p99 float64
			}
			aggs := make([]agg, len(makers))
			for i := range makers {
				var oks, per, walls, p99s []float64
				for _, sr := range res[m][i] {
					oks = append(oks, float64(sr.o.ok))
					per = append(per, sr.perSuccess())
					walls = append(walls, float64(sr.o.wall))
					p99s = append(p99s, float64(quantile(sr.o.okLat, 0.99)))
				}
				lo, hi := minMax(oks)
				aggs[i] = agg{res[m][i][0].name, median(oks), lo, hi, median(per), median(walls), median(p99s)}
				a := aggs[i]
				detail.add(storm, mode.String(), a.name,
					fmt.Sprintf("%s (%.0f–%.0f of %d)", pct(a.ok/float64(p.n)), a.lo, a.hi, p.n),
					fmt.Sprintf("%.2f", a.perSucc), fmtDur(time.Duration(a.wall))+" ("+fmtDur(ideal)+")", fmtDur(time.Duration(a.p99)))
			}
			ld, og, bare := aggs[0], aggs[1], aggs[2]
			met := ld.lo == float64(p.n) && ld.perSucc < og.perSucc
			sec.addRow("4", fmt.Sprintf("429 storm, %s, %s: success; requests per success", sc.name, mode),
				fmt.Sprintf("%s; %.2f", pct(ld.ok/float64(p.n)), ld.perSucc),
				fmt.Sprintf("openai-go %s; %.2f — bare go-openai %s; %.2f", pct(og.ok/float64(p.n)), og.perSucc, pct(bare.ok/float64(p.n)), bare.perSucc),
				fmt.Sprintf("%.2fx the requests per success of openai-go", ld.perSucc/og.perSucc),
				"100 % and fewer than openai-go", verdict(met))
		}
	}
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("A token bucket admitting %.0f requests/s (burst %.0f) sits in front of an llmtest server with zero latency and answers the excess with 429 and an OpenAI-format error. The callers are about twice as many as the limit admits per second; each client runs alone against a fresh bucket, %d repetition(s), medians shown. Requests per success is every request the bucket saw, 429s included, over the calls that succeeded: 1.00 is ideal, and failed calls' requests count as waste. The ideal wall time is (calls − burst) / rate.", cases[0].p.rate, cases[0].p.burst, reps),
		"The hint is the time until the next token: rounded up to whole seconds in Retry-After, to the millisecond in retry-after-ms. llmdrain runs with its defaults (3 retries, DefaultBackoff, server hints honoured up to 60 s); openai-go with its own (2 retries, hints honoured up to 2 min, otherwise 0.5 s doubling with up to 25 % jitter); go-openai does not retry.",
		"Under Retry-After: 1 every waiting caller comes back in the same second, and the bucket admits the first 50 of each wave: a lottery each call must win within its attempts. llmdrain has one attempt more than openai-go, and the short storm is exactly four waves long, so it fits llmdrain's budget and not openai-go's; the long storm shows what happens when it does not fit.")
	return sec
}
