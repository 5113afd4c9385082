package llmdrain_test

import (
	"context"
	"errors"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmdrain/llmdrain"
)

// The tracker benchmarks compare Begin+done with the least the contract
// needs: a cancellable context per call, a WaitGroup for Drain to wait on
// and an atomic count for InFlight. Timing targets live in the bench
// program's table (cd bench && go run .), not here.

// BenchmarkTrackerBeginDone is the cost of registering and finishing one
// call, from every P at once.
func BenchmarkTrackerBeginDone(b *testing.B) {
	tr := llmdrain.NewTracker()
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_, done, err := tr.Begin(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			done()
		}
	})
}

// BenchmarkTrackerBaselineContract is the floor Begin+done is measured
// against: context.WithCancelCause, WaitGroup Add/Done and an atomic count.
func BenchmarkTrackerBaselineContract(b *testing.B) {
	var (
		wg sync.WaitGroup
		n  atomic.Int64
	)
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			wg.Add(1)
			n.Add(1)
			_, cancel := context.WithCancelCause(ctx)
			cancel(context.Canceled)
			n.Add(-1)
			wg.Done()
		}
	})
	wg.Wait()
}

// BenchmarkTrackerBaselineWaitGroup is WaitGroup Add/Done and an atomic
// count alone, for scale.
func BenchmarkTrackerBaselineWaitGroup(b *testing.B) {
	var (
		wg sync.WaitGroup
		n  atomic.Int64
	)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			wg.Add(1)
			n.Add(1)
			n.Add(-1)
			wg.Done()
		}
	})
	wg.Wait()
}

// BenchmarkDrainLatency measures, per trial, the time from the last
// in-flight call's done to Drain returning, while Drain is already
// waiting. It reports the median and 99th percentile as p50-ns and p99-ns;
// ns/op is the whole trial, goroutine start-up included.
func BenchmarkDrainLatency(b *testing.B) {
	lat := make([]time.Duration, 0, b.N)
	ctx := context.Background()
	for range b.N {
		tr := llmdrain.NewTracker()
		_, done, err := tr.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		returned := make(chan time.Time, 1)
		go func() {
			_ = tr.Drain(ctx)
			returned <- time.Now()
		}()
		for !tr.Draining() {
			time.Sleep(10 * time.Microsecond)
		}
		// Let Drain reach its wait before the call finishes.
		time.Sleep(50 * time.Microsecond)
		start := time.Now()
		done()
		lat = append(lat, (<-returned).Sub(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}

// TestTrackerStaleDoneAfterReuse checks that a done called again after its
// call's registry slot went to a newer call leaves that call alone.
func TestTrackerStaleDoneAfterReuse(t *testing.T) {
	tr := llmdrain.NewTracker()
	var stale []func()
	for range 1000 {
		_, done, err := tr.Begin(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		done()
		stale = append(stale, done)
	}
	ctx, done, err := tr.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range stale {
		d()
	}
	if got := tr.InFlight(); got != 1 {
		t.Fatalf("InFlight = %d after stale dones, want 1", got)
	}
	if ctx.Err() != nil {
		t.Fatal("a stale done cancelled a newer call's context")
	}
	done()
	if got := tr.InFlight(); got != 0 {
		t.Fatalf("InFlight = %d, want 0", got)
	}
}

// TestTrackerStragglersOldestFirst checks the forced drain's report: every
// straggler named once, oldest first, with a start time that makes sense.
func TestTrackerStragglersOldestFirst(t *testing.T) {
	tr := llmdrain.NewTracker()
	before := time.Now()
	const n = 100
	var wg sync.WaitGroup
	for range n {
		ctx, done, err := tr.Begin(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ctx.Done()
			done()
		}()
		time.Sleep(10 * time.Microsecond)
	}
	after := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	err := tr.Drain(ctx)
	wg.Wait()
	var fe *llmdrain.ForcedDrainError
	if !errors.As(err, &fe) {
		t.Fatalf("Drain = %v, want a *ForcedDrainError", err)
	}
	if len(fe.Stragglers) != n {
		t.Fatalf("%d stragglers, want %d", len(fe.Stragglers), n)
	}
	ids := map[uint64]bool{}
	for i, c := range fe.Stragglers {
		if ids[c.ID] {
			t.Fatalf("ID %d reported twice", c.ID)
		}
		ids[c.ID] = true
		// The wall time is rebuilt from the monotonic clock; allow for
		// the rounding of one clock against the other.
		if c.Started.Before(before.Add(-time.Millisecond)) || c.Started.After(after.Add(time.Millisecond)) {
			t.Fatalf("straggler %d started at %v, outside [%v, %v]", i, c.Started, before, after)
		}
		if i > 0 && c.Started.Before(fe.Stragglers[i-1].Started) {
			t.Fatalf("stragglers not oldest first at %d", i)
		}
	}
}

// TestTrackerDrainWaitsForEveryAdmittedCall races calls spread over the
// shards against Drain: no call may be admitted once Drain has returned,
// and Drain must not return while an admitted call has not called done.
func TestTrackerDrainWaitsForEveryAdmittedCall(t *testing.T) {
	for i := range 300 {
		tr := llmdrain.NewTracker()
		var (
			wg       sync.WaitGroup
			running  atomic.Int64 // admitted calls that have not called done
			returned atomic.Bool  // Drain has returned
			late     atomic.Int64 // calls admitted after that
		)
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := 0; ; k++ {
					_, done, err := tr.Begin(context.Background())
					if err != nil {
						return
					}
					if returned.Load() {
						late.Add(1)
					}
					running.Add(1)
					if (g+k)%4 == 0 {
						runtime.Gosched()
					}
					running.Add(-1)
					done()
				}
			}()
		}
		time.Sleep(time.Duration(i%20) * 10 * time.Microsecond)
		if err := tr.Drain(context.Background()); err != nil {
			t.Fatal(err)
		}
		n := running.Load()
		returned.Store(true)
		wg.Wait()
		if n != 0 {
			t.Fatalf("Drain returned with %d admitted calls still running", n)
		}
		if n := late.Load(); n != 0 {
			t.Fatalf("%d calls admitted after Drain returned", n)
		}
		if n := tr.InFlight(); n != 0 {
			t.Fatalf("InFlight = %d after Drain", n)
		}
	}
}
