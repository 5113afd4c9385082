package main

import (
	"context"
	"flag"
	"fmt"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmdrain/llmdrain"
)

// trackerBench is one Begin+done style benchmark body for b.RunParallel.
type trackerBench struct {
	name string
	run  func(b *testing.B, ops *atomic.Int64)
}

func trackerBenches() []trackerBench {
	return []trackerBench{
		{"llmdrain Tracker Begin+done", func(b *testing.B, ops *atomic.Int64) {
			tr := llmdrain.NewTracker()
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var k int64
				defer func() { ops.Add(k) }()
				for pb.Next() {
					k++
					_, done, err := tr.Begin(ctx)
					if err != nil {
						panic(err)
					}
					done()
				}
			})
		}},
		{"baseline: WithCancelCause + WaitGroup + atomic", func(b *testing.B, ops *atomic.Int64) {
			var (
				wg sync.WaitGroup
				n  atomic.Int64
			)
			ctx := context.Background()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var k int64
				defer func() { ops.Add(k) }()
				for pb.Next() {
					k++
					wg.Add(1)
					n.Add(1)
					_, cancel := context.WithCancelCause(ctx)
					cancel(context.Canceled)
					n.Add(-1)
					wg.Done()
				}
			})
			wg.Wait()
		}},
		{"scale: WaitGroup + atomic only", func(b *testing.B, ops *atomic.Int64) {
			var (
				wg sync.WaitGroup
				n  atomic.Int64
			)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				var k int64
				defer func() { ops.Add(k) }()
				for pb.Next() {
					k++
					wg.Add(1)
					n.Add(1)
					n.Add(-1)
					wg.Done()
				}
			})
			wg.Wait()
		}},
	}
}

// mutexWait is the process's cumulative time blocked on sync.Mutex and
// runtime locks.
func mutexWait() time.Duration {
	s := []metrics.Sample{{Name: "/sync/mutex/wait/total:seconds"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return time.Duration(s[0].Value.Float64() * float64(time.Second))
}

// runTracker compares the Tracker's Begin+done under b.RunParallel with the
// least its contract needs, in interleaved testing.Benchmark runs.
func runTracker(rc runConfig) section {
	benchtime := "300ms"
	if rc.quick {
		benchtime = "100ms"
	}
	if err := flag.Set("test.benchtime", benchtime); err != nil {
		panic(err)
	}
	benches := trackerBenches()
	ns := make([][]float64, len(benches))
	ratios := make([][]float64, len(benches))
	cpuNs := make([][]float64, len(benches))
	cpuRatios := make([][]float64, len(benches))
	allocs := make([]int64, len(benches))
	bytes := make([]int64, len(benches))
	waits := make([][]float64, len(benches))
	for r := range rc.reps {
		rc.progress("tracker rep %d/%d", r+1, rc.reps)
		got := make([]float64, len(benches))
		gotCPU := make([]float64, len(benches))
		for k := range benches {
			i := (k + r) % len(benches)
			var ops atomic.Int64
			w0, c0 := mutexWait(), cpuTime()
			res := testing.Benchmark(func(b *testing.B) { benches[i].run(b, &ops) })
			w, cpu := mutexWait()-w0, cpuTime()-c0
			got[i] = float64(res.NsPerOp())
			ns[i] = append(ns[i], got[i])
			// CPU time counts testing.Benchmark's calibration runs too, and so
			// does ops.
			cpuNs[i] = append(cpuNs[i], float64(cpu.Nanoseconds())/float64(ops.Load()))
			gotCPU[i] = cpuNs[i][len(cpuNs[i])-1]
			allocs[i], bytes[i] = res.AllocsPerOp(), res.AllocedBytesPerOp()
			waits[i] = append(waits[i], float64(w.Nanoseconds())/float64(ops.Load()))
		}
		for i := range benches {
			ratios[i] = append(ratios[i], got[i]/got[1])
			cpuRatios[i] = append(cpuRatios[i], gotCPU[i]/gotCPU[1])
		}
	}
	sec := section{title: "2. Tracker cost"}
	detail := table{head: []string{"Benchmark (RunParallel, GOMAXPROCS goroutines)", "ns/op (median, min–max)", "vs baseline", "CPU ns/op (median)", "vs baseline (CPU)", "allocs/op", "B/op", "lock wait/op"}}
	for i, b := range benches {
		lo, hi := minMax(ns[i])
		detail.add(b.name, fmt.Sprintf("%.0f (%.0f–%.0f)", median(ns[i]), lo, hi), fmt.Sprintf("%.2fx", median(ratios[i])),
			fmt.Sprintf("%.0f", median(cpuNs[i])), fmt.Sprintf("%.2fx", median(cpuRatios[i])),
			fmt.Sprint(allocs[i]), fmt.Sprint(bytes[i]), fmt.Sprintf("%.1f ns", median(waits[i])))
	}
	r, rc2 := median(ratios[0]), median(cpuRatios[0])
	sec.addRow("2", "Tracker Begin+done (RunParallel): ns/op",
		fmt.Sprintf("%.0f ns (CPU %.0f ns), %d allocs", median(ns[0]), median(cpuNs[0]), allocs[0]),
		fmt.Sprintf("ctx+WaitGroup+atomic %.0f ns (CPU %.0f ns), %d allocs; WaitGroup+atomic alone %.0f ns", median(ns[1]), median(cpuNs[1]), allocs[1], median(ns[2])),
		fmt.Sprintf("%.2fx (CPU %.2fx)", r, rc2), "≤ 1.5x", verdict(r <= 1.5))
	sec.addRow("2", "Tracker: time blocked on locks per call",
		fmt.Sprintf("%.1f ns", median(waits[0])), fmt.Sprintf("baseline %.1f ns", median(waits[1])), "—",
		"no lock all calls contend on", verdict(median(waits[0]) < 0.05*median(ns[0])))
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("testing.Benchmark with -benchtime %s, %d interleaved repetitions of each, order rotated; ratios are taken per repetition, then the median. ns/op is wall time as go test reports it; CPU ns/op is the process's user+system time over the same runs divided by the operations done, which neighbours on a shared machine disturb less.", benchtime, rc.reps),
		"Lock wait/op is the growth of runtime/metrics /sync/mutex/wait/total:seconds over the run (sync.Mutex and runtime-internal locks, GC included) divided by the operations: near zero means no lock that calls queue on. The Tracker keeps its calls and their count in 32 shards, each with its own lock on its own cache lines, and picks one at random per call: there is no lock, and no word, that every call writes; only a drain adds the shard counts up.")
	return sec
}
