//go:build unix

package llmdrain_test

import (
	"context"
	"runtime/pprof"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/llmdrain/llmdrain/llmtest"
)

// BenchmarkClientOverheadPaired runs BenchmarkClientOverhead's clients in
// turn, in short blocks of calls, and reports each llmdrain client's cost
// beside bare go-openai's from the same run: "bare/llmdrain" is the median
// over rounds of bare's process CPU per call over llmdrain's (1 means no
// overhead; the happy-path goal is 0.97 of a whole process, server
// included, so a client-alone ratio is the stricter one), and
// "llmdrain-µs" the median of the extra CPU per call. A round runs one
// block of each client, starting with a different one each round; on a
// shared machine the neighbours' noise then falls on every client alike
// and the median drops the rounds it hit hardest. Process CPU includes
// the garbage collector's work, which is part of what allocations cost.
//
//	go test -run '^$' -bench ClientOverheadPaired -benchtime 200000x .
func BenchmarkClientOverheadPaired(b *testing.B) {
	pairedOverhead(b, overheadClients(b))
}

// BenchmarkCreateChatCompletionPaired is BenchmarkClientOverheadPaired
// over a socket: the clients of BenchmarkCreateChatCompletion against one
// in-process llmtest server, one call at a time. Process CPU includes the
// server's share, the same for every client, as in the bench program's
// happy path, whose goal (0.97) this ratio is comparable with.
//
//	go test -run '^$' -bench CreateChatCompletionPaired -benchtime 60000x .
func BenchmarkCreateChatCompletionPaired(b *testing.B) {
	srv := llmtest.NewServer()
	defer srv.Close()
	pairedOverhead(b, socketClients(b, srv.URL))
}

// pairedOverhead runs clients (bare go-openai first) in turn in blocks,
// and reports each other client's CPU per call as a ratio to bare's and as
// extra microseconds, medians over the rounds.
func pairedOverhead(b *testing.B, clients []overheadClient) {
	const block = 250
	ctx := context.Background()
	run := func(i, n int) (d time.Duration) {
		// Labelled, so that a CPU profile of the run splits by client
		// (go tool pprof -tagfocus client=llmdrain), with the goroutines
		// net/http starts for the client's connections.
		pprof.Do(ctx, pprof.Labels("client", clients[i].name), func(ctx context.Context) {
			c0 := processCPU(b)
			for range n {
				if _, err := clients[i].call(ctx, overheadRequest()); err != nil {
					b.Fatal(err)
				}
			}
			d = processCPU(b) - c0
		})
		return d
	}
	for i := range clients { // warm pools and caches
		run(i, block)
	}
	ratios := make([][]float64, len(clients))
	extra := make([][]float64, len(clients))
	cpu := make([]time.Duration, len(clients))
	b.ResetTimer()
	for round, done := 0, 0; done < b.N; round++ {
		n := min(block, b.N-done)
		for k := range clients {
			i := (k + round) % len(clients)
			cpu[i] = run(i, n)
		}
		for i := 1; i < len(clients); i++ {
			if cpu[i] > 0 {
				ratios[i] = append(ratios[i], float64(cpu[0])/float64(cpu[i]))
			}
			extra[i] = append(extra[i], float64(cpu[i]-cpu[0])/float64(n)/1e3)
		}
		done += n
	}
	for i := 1; i < len(clients); i++ {
		b.ReportMetric(medianOf(ratios[i]), "bare/"+clients[i].name)
		b.ReportMetric(medianOf(extra[i]), clients[i].name+"-µs")
	}
}

// processCPU is the process's user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func medianOf(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
