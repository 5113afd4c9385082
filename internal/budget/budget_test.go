package budget

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestNilIsNoCap(t *testing.T) {
	var b *Budget
	if err := b.Reserve(context.Background(), 1<<60); err != nil {
		t.Fatal(err)
	}
	b.Settle(1, 2)
	b.Spend(3)
	if b.Spent() != 0 || b.Max() != 0 {
		t.Fatal("a nil budget counted")
	}
}

// Reservations larger than what spending left are refused at once; those
// that only outstanding reservations keep out wait for them to settle.
func TestReserveWaitsForOutstanding(t *testing.T) {
	ctx := context.Background()
	b := New(10, false)
	if err := b.Reserve(ctx, 8); err != nil {
		t.Fatal(err)
	}
	if err := b.Reserve(ctx, 11); !errors.Is(err, ErrExceeded) {
		t.Fatalf("11 of 10: %v", err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Reserve(ctx, 5) }()
	select {
	case err := <-got:
		t.Fatalf("granted while 8 of 10 reserved: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	b.Settle(8, 3) // 3 spent, 7 left
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// 3 spent, 5 reserved: 3 more do not fit until it settles; at 4 spent
	// there is room for 6 no more.
	go func() { got <- b.Reserve(ctx, 7) }()
	b.Settle(5, 1)
	if err := <-got; !errors.Is(err, ErrExceeded) {
		t.Fatalf("7 with 4 of 10 spent: %v", err)
	}
	if err := b.Reserve(ctx, 6); err != nil {
		t.Fatal(err)
	}
	b.Settle(6, 6)
	if b.Spent() != 10 {
		t.Fatalf("spent %d, want 10", b.Spent())
	}
}

// A sticky budget refuses everything after its first refusal; another one
// still grants what fits.
func TestSticky(t *testing.T) {
	ctx := context.Background()
	for _, sticky := range []bool{false, true} {
		b := New(10, sticky)
		if err := b.Reserve(ctx, 11); !errors.Is(err, ErrExceeded) {
			t.Fatal(err)
		}
		err := b.Reserve(ctx, 1)
		if sticky != errors.Is(err, ErrExceeded) {
			t.Fatalf("sticky %v: %v", sticky, err)
		}
	}
}

// A waiter whose context ends leaves the queue and takes nothing; the ones
// behind it are served.
func TestReserveCancelled(t *testing.T) {
	b := New(10, false)
	if err := b.Reserve(context.Background(), 10); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- b.Reserve(ctx, 5) }()
	second := make(chan error, 1)
	waitQueue(t, b, 1)
	go func() { second <- b.Reserve(context.Background(), 2) }()
	waitQueue(t, b, 2)
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	b.Settle(10, 8)
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

func waitQueue(t *testing.T, b *Budget, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b.mu.Lock()
		l := len(b.queue)
		b.mu.Unlock()
		if l == n {
			return
		}
	}
	t.Fatalf("queue never reached %d", n)
}

// Under concurrency the cap holds exactly: 64 workers each spending
// what they reserve fill it and never pass it.
func TestConcurrentExactCap(t *testing.T) {
	const cost, fits = 7, 40
	b := New(cost*fits, true)
	var granted, refused atomic.Int32
	var wg sync.WaitGroup
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if err := b.Reserve(context.Background(), cost); err != nil {
					refused.Add(1)
					return
				}
				granted.Add(1)
				b.Settle(cost, cost)
			}
		}()
	}
	wg.Wait()
	if granted.Load() != fits || refused.Load() != 64 || b.Spent() != cost*fits {
		t.Fatalf("granted %d, refused %d, spent %d; want %d, 64, %d", granted.Load(), refused.Load(), b.Spent(), fits, cost*fits)
	}
}

// TryReserve takes what fits and never waits, nor jumps the queue.
func TestTryReserve(t *testing.T) {
	b := New(10, false)
	if err := b.TryReserve(6); err != nil {
		t.Fatal(err)
	}
	if err := b.TryReserve(5); !errors.Is(err, ErrExceeded) {
		t.Fatalf("5 with 6 of 10 reserved: %v", err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Reserve(context.Background(), 5) }()
	waitQueue(t, b, 1)
	if err := b.TryReserve(1); !errors.Is(err, ErrExceeded) {
		t.Fatalf("jumped the queue: %v", err)
	}
	b.Settle(6, 2)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if err := b.TryReserve(3); err != nil {
		t.Fatal(err)
	}
	var nilBudget *Budget
	if err := nilBudget.TryReserve(1 << 60); err != nil {
		t.Fatal(err)
	}
}
