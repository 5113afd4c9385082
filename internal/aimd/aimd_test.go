package aimd

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func acquire(t *testing.T, l *Limiter) Permit {
	t.Helper()
	p, _, err := l.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNilAdmits(t *testing.T) {
	var l *Limiter
	p, waited, err := l.Acquire(context.Background())
	if err != nil || waited {
		t.Fatal("a nil limiter held a call")
	}
	p.Done(true)
}

func TestHalvesOncePerWindow(t *testing.T) {
	l := New(8)
	ps := make([]Permit, 8)
	for i := range ps {
		ps[i] = acquire(t, l)
	}
	for _, p := range ps {
		p.Done(true) // eight 429s from one wave
	}
	if got := l.Limit(); got != 4 {
		t.Fatalf("limit %d after one wave of 429s, want 4", got)
	}
	acquire(t, l).Done(true)
	if got := l.Limit(); got != 2 {
		t.Fatalf("limit %d after a 429 admitted under the new limit, want 2", got)
	}
	acquire(t, l).Done(true)
	acquire(t, l).Done(true)
	if got := l.Limit(); got != 1 {
		t.Fatalf("limit %d, want the floor 1", got)
	}
}

func TestGrowsFromOneWithFewCalls(t *testing.T) {
	l := New(4)
	for l.Limit() > 1 {
		acquire(t, l).Done(true)
	}
	// One call at a time, never using the limit fully: still grows.
	for range 1 + 2 + 3 {
		acquire(t, l).Done(false)
	}
	if got := l.Limit(); got != 4 {
		t.Fatalf("limit %d after 6 clean answers from 1, want 4", got)
	}
	for range 100 {
		acquire(t, l).Done(false)
	}
	if got := l.Limit(); got != 4 {
		t.Fatalf("limit %d above the ceiling 4", got)
	}
}

func TestWaitsAndIsBoundedByContext(t *testing.T) {
	l := New(1)
	p := acquire(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	_, waited, err := l.Acquire(ctx)
	if !waited || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waited %v, err %v; want a wait ended by the deadline", waited, err)
	}
	got := make(chan bool)
	go func() {
		q, waited, err := l.Acquire(context.Background())
		if err == nil {
			q.Done(false)
		}
		got <- waited && err == nil
	}()
	for { // until the goroutine queues
		l.mu.Lock()
		n := len(l.waiters)
		l.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	p.Done(false)
	if !<-got {
		t.Fatal("the waiter was not admitted when the place was given back")
	}
	if l.inflight != 0 {
		t.Fatalf("%d in flight after all were done", l.inflight)
	}
}
