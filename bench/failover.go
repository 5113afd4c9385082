package main

import (
	"fmt"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

type failoverParams struct {
	outage   time.Duration // the primary answers 503 for this long from the start
	n        int           // calls, one started every interval
	interval time.Duration
	latency  time.Duration // of both endpoints when healthy
}

func runFailover(rc runConfig) section {
	p := failoverParams{outage: 2 * time.Second, n: 200, interval: 20 * time.Millisecond, latency: 20 * time.Millisecond}
	if rc.quick {
		p = failoverParams{outage: 600 * time.Millisecond, n: 60, interval: 20 * time.Millisecond, latency: 20 * time.Millisecond}
	}
	primary := llmtest.NewServer(llmtest.WithLatency(p.latency))
	defer primary.Close()
	fallback := llmtest.NewServer(llmtest.WithLatency(p.latency))
	defer fallback.Close()

	type contender struct {
		name string
		mk   func(primaryURL string) caller
	}
	contenders := []contender{
		{"llmdrain, one fallback", func(u string) caller {
			c, _ := llmdrainClient("llmdrain, one fallback", u, llmdrain.Config{FallbackURLs: []string{fallback.URL}})
			return c
		}},
		{"openai-go v3 (default retries)", openAIGo},
		{"llmdrain, no fallback", func(u string) caller {
			c, _ := llmdrainClient("llmdrain, no fallback", u, llmdrain.Config{})
			return c
		}},
		{"go-openai (bare)", bareGoOpenAI},
	}
	sec := section{title: "5. 5xx outage and failover"}
	detail := table{head: []string{"Client", "Success", "p50 latency", "p99 latency", "Requests to primary", "Requests to fallback"}}
	var res []outcome
	for _, ct := range contenders {
		fb0 := fallback.Stats().Requests
		// The outage starts now, a few microseconds before the first call.
		g := newGate(primary.URL, outage(time.Now().Add(p.outage)))
		srv, url := serve(g)
		c := ct.mk(v1(url))
		o := openLoop(c, p.n, p.interval)
		c.close()
		srv.Close()
		g.transp.CloseIdleConnections()
		rc.progress("failover: %s: %d/%d ok, p99 %v", ct.name, o.ok, o.calls, quantile(o.lat, 0.99).Round(time.Millisecond))
		res = append(res, o)
		detail.add(ct.name, fmt.Sprintf("%d/%d (%s)", o.ok, o.calls, pct(o.successRate())),
			fmtDur(quantile(o.lat, 0.5)), fmtDur(quantile(o.lat, 0.99)),
			fmtNum(float64(g.requests.Load())), fmtNum(float64(fallback.Stats().Requests-fb0)))
	}
	ld, og := res[0], res[1]
	sec.addRow("5", "503 outage: success; p99 latency",
		fmt.Sprintf("%s; %s", pct(ld.successRate()), fmtDur(quantile(ld.lat, 0.99))),
		fmt.Sprintf("openai-go %s; %s (llmdrain without fallback %s; %s)", pct(og.successRate()), fmtDur(quantile(og.lat, 0.99)),
			pct(res[2].successRate()), fmtDur(quantile(res[2].lat, 0.99))),
		fmt.Sprintf("%.2fx p99 of openai-go", float64(quantile(ld.lat, 0.99))/float64(quantile(og.lat, 0.99))),
		"better than openai-go", verdict(ld.successRate() >= og.successRate() && quantile(ld.lat, 0.99) < quantile(og.lat, 0.99)))
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("The primary (an llmtest server, %v latency) sits behind a gate answering 503 without a retry hint for the first %v of the run; the fallback is a second llmtest server with the same latency. One call starts every %v whatever the calls in flight (open loop), %d in all, so about %.0f %% of the calls start during the outage. Latency is per call, failed calls included.",
			p.latency, p.outage, p.interval, p.n, 100*float64(p.outage)/float64(time.Duration(p.n)*p.interval)),
		"llmdrain fails over after 3 consecutive failed attempts against the primary (DefaultFailoverAfter) and stays on the fallback while it answers; openai-go and go-openai have no failover, so they get the primary only.")
	return sec
}
