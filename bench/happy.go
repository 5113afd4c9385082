package main

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
	"github.com/llmdrain/llmdrain/otelmetrics"
)

// throughput runs conc workers calling c back to back for window and
// returns calls per second, heap allocations and CPU time per call (the
// whole process: the in-process server's share is the same for every
// contender) and the number of failed calls.
func throughput(c caller, conc int, window time.Duration) (perSec, allocs float64, cpu time.Duration, failed int64) {
	var ok, bad atomic.Int64
	var wg sync.WaitGroup
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cpu0 := cpuTime()
	start := time.Now()
	stop := start.Add(window)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx := context.Background()
			for time.Now().Before(stop) {
				if err := c.call(ctx); err != nil {
					bad.Add(1)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu = cpuTime() - cpu0
	runtime.ReadMemStats(&after)
	n := ok.Load()
	calls := max(n+bad.Load(), 1)
	return float64(n) / elapsed.Seconds(), float64(after.Mallocs-before.Mallocs) / float64(calls), cpu / time.Duration(calls), bad.Load()
}

// runHappy compares calls per second through llmdrain with the bare
// go-openai client (and openai-go, for scale) against one zero-latency
// llmtest server, in interleaved windows.
func runHappy(rc runConfig) section {
	srv := llmtest.NewServer()
	defer srv.Close()

	bare := bareGoOpenAI(srv.URL)
	ld, _ := llmdrainClient("llmdrain", srv.URL, llmdrain.Config{})
	og := openAIGo(srv.URL)
	// Every hook set, doing nothing: what observing costs before a
	// metrics library adds its own (the otelmetrics module's instruments
	// run in these hooks).
	hk, _ := llmdrainClient("llmdrain, every hook set (no-op)", srv.URL, llmdrain.Config{Hooks: &llmdrain.Hooks{
		CallStart:    func(llmdrain.CallStartInfo) {},
		CallDone:     func(llmdrain.CallDoneInfo) {},
		AttemptDone:  func(llmdrain.AttemptInfo) {},
		Waited:       func(llmdrain.WaitInfo) {},
		TargetChange: func(llmdrain.TargetChangeInfo) {},
		DrainStart:   func(llmdrain.DrainStartInfo) {},
		DrainDone:    func(llmdrain.DrainDoneInfo) {},
	}})
	// The otelmetrics module's instruments, recorded into an SDK
	// MeterProvider whose manual reader nobody collects: what recording
	// costs, without an exporter's.
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	metrics, err := otelmetrics.New(mp)
	if err != nil {
		panic(err)
	}
	om, _ := llmdrainClient("llmdrain, metrics on (otelmetrics)", srv.URL, llmdrain.Config{Hooks: metrics})
	// What net/http costs under a cancellable context, and the least a
	// client that can end calls in flight adds: the part of llmdrain's
	// overhead any such client pays (see bareCancellable, floorClient).
	contenders := []caller{bare, ld, og, hk, om, bareCancellable(srv.URL), floorClient(srv.URL)}
	defer func() {
		for _, c := range contenders {
			c.close()
		}
	}()

	// Many short windows rather than a few long ones: on a shared machine
	// a neighbour's burst spoils a window or two, and the median of many
	// paired ratios drops them, where a few long windows each carry some.
	window, rounds := 100*time.Millisecond, rc.reps*10
	if rc.quick {
		window = 50 * time.Millisecond
	}
	sec := section{title: "1. Happy-path overhead"}
	var detail table
	detail.head = []string{"Concurrency", "Client", "Calls/s (median, min–max)", "vs bare go-openai (median, min–max)", "CPU/call (process)", "vs bare, by CPU/call (median, min–max)", "Allocs/call (process)"}
	for _, conc := range []int{1, 32} {
		// Warm up pools and connections.
		for _, c := range contenders {
			throughput(c, conc, window)
		}
		rates := make([][]float64, len(contenders))
		cpus := make([][]float64, len(contenders))
		cpuRatios := make([][]float64, len(contenders))
		allocs := make([][]float64, len(contenders))
		ratios := make([][]float64, len(contenders))
		var failed int64
		for r := range rounds {
			if r%10 == 9 {
				rc.progress("happy path c=%d round %d/%d", conc, r+1, rounds)
			}
			got := make([]float64, len(contenders))
			gotCPU := make([]float64, len(contenders))
			// Rotate the order so that no contender always runs first.
			for k := range contenders {
				i := (k + r) % len(contenders)
				ps, al, cpu, bad := throughput(contenders[i], conc, window)
				got[i], gotCPU[i] = ps, float64(cpu)
				cpus[i] = append(cpus[i], float64(cpu))
				rates[i] = append(rates[i], ps)
				allocs[i] = append(allocs[i], al)
				failed += bad
			}
			for i := range contenders {
				ratios[i] = append(ratios[i], got[i]/got[0])
				cpuRatios[i] = append(cpuRatios[i], gotCPU[0]/gotCPU[i])
			}
		}
		for i, c := range contenders {
			lo, hi := minMax(rates[i])
			ratio, cpuRatio := "—", "—"
			if i > 0 {
				// The spread of the paired ratios, not only their median:
				// on a shared machine it says how far one run can be trusted.
				rlo, rhi := minMax(ratios[i])
				clo, chi := minMax(cpuRatios[i])
				ratio = fmt.Sprintf("%s (%s–%s)", pct(median(ratios[i])), pct(rlo), pct(rhi))
				cpuRatio = fmt.Sprintf("%s (%s–%s)", pct(median(cpuRatios[i])), pct(clo), pct(chi))
			}
			detail.add(fmt.Sprint(conc), c.name, fmt.Sprintf("%s (%s–%s)", fmtNum(median(rates[i])), fmtNum(lo), fmtNum(hi)), ratio,
				fmtDur(time.Duration(median(cpus[i]))), cpuRatio, fmt.Sprintf("%.0f", median(allocs[i])))
		}
		r := median(ratios[1])
		extra := median(allocs[1]) - median(allocs[0])
		sec.addRow("1", fmt.Sprintf("Happy path, concurrency %d: calls/s", conc),
			fmt.Sprintf("%s/s, +%.0f allocs/call", fmtNum(median(rates[1])), extra),
			fmt.Sprintf("bare go-openai %s/s (openai-go %s/s)", fmtNum(median(rates[0])), fmtNum(median(rates[2]))),
			fmt.Sprintf("%s (by CPU/call %s)", pct(r), pct(median(cpuRatios[1]))), "≥ 97 %", verdict(r >= 0.97))
		rh := median(ratios[3])
		sec.addRow("1", fmt.Sprintf("Happy path, every hook set (no-op), concurrency %d: calls/s", conc),
			fmt.Sprintf("%s/s, +%.0f allocs/call", fmtNum(median(rates[3])), median(allocs[3])-median(allocs[0])),
			fmt.Sprintf("bare go-openai %s/s", fmtNum(median(rates[0]))),
			fmt.Sprintf("%s (by CPU/call %s)", pct(rh), pct(median(cpuRatios[3]))), "≥ 95 %", verdict(rh >= 0.95))
		rm := median(ratios[4])
		sec.addRow("1", fmt.Sprintf("Happy path, metrics on (otelmetrics), concurrency %d: calls/s", conc),
			fmt.Sprintf("%s/s, +%.0f allocs/call", fmtNum(median(rates[4])), median(allocs[4])-median(allocs[0])),
			fmt.Sprintf("bare go-openai %s/s", fmtNum(median(rates[0]))),
			fmt.Sprintf("%s (by CPU/call %s)", pct(rm), pct(median(cpuRatios[4]))), "≥ 95 %", verdict(rm >= 0.95))
		rc5, rf := median(ratios[5]), median(ratios[6])
		sec.addRow("1", fmt.Sprintf("Happy path, concurrency %d: llmdrain over the floor of cancellable calls", conc),
			fmt.Sprintf("%s/s", fmtNum(median(rates[1]))),
			fmt.Sprintf("floor %s/s (%s of bare; bare under a cancellable context: %s)", fmtNum(median(rates[6])), pct(rf), pct(rc5)),
			pct(r/rf), "—", "—")
		if failed > 0 {
			sec.broken = append(sec.broken, fmt.Sprintf("concurrency %d: %d calls failed, none should", conc, failed))
		}
	}
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("Each window is %v of back-to-back calls against one in-process llmtest server with zero latency; %d windows per client (10 per repetition), one of each client per round, the order rotated each round. Ratios are paired per round, then the median taken. CPU/call is the process's user+system time over the window divided by the calls, and \"by CPU/call\" is bare's CPU/call over the client's: the throughput ratio a CPU-bound machine would show, less disturbed by neighbours. Allocations and CPU are for the whole process, server included, so only the difference between clients is the client's.", window, rounds))
	return sec
}

func minMax(xs []float64) (lo, hi float64) {
	for i, x := range xs {
		if i == 0 || x < lo {
			lo = x
		}
		if i == 0 || x > hi {
			hi = x
		}
	}
	return lo, hi
}

func verdict(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}
