package gcra

import (
	"testing"
	"time"
)

func TestBurstThenRate(t *testing.T) {
	now := time.Unix(0, 0)
	b := New(10, time.Second, 10) // 10 per second, all at once
	for i := range 10 {
		if w := b.Take(now, 1); w != 0 {
			t.Fatalf("draw %d of the burst held %v", i+1, w)
		}
	}
	w := b.Take(now, 1)
	if w != 100*time.Millisecond {
		t.Fatalf("wait %v with the burst spent, want 100ms", w)
	}
	now = now.Add(w)
	if w := b.Take(now, 1); w != 0 {
		t.Fatalf("held %v after the wait asked for", w)
	}
}

func TestLargerThanBurstWaitsForFull(t *testing.T) {
	now := time.Unix(0, 0)
	b := New(10, time.Second, 10)
	b.Take(now, 5)
	if w := b.Take(now, 20); w != 500*time.Millisecond {
		t.Fatalf("wait %v for a draw beyond the burst, want until full (500ms)", w)
	}
}

func TestGiveAndResize(t *testing.T) {
	now := time.Unix(0, 0)
	b := New(10, time.Second, 10)
	b.Take(now, 10)
	b.Give(now, 4)
	for i := range 4 {
		if w := b.Take(now, 1); w != 0 {
			t.Fatalf("given-back unit %d held %v", i+1, w)
		}
	}
	// Half in use at 10; the same share of 20.
	b = New(10, time.Second, 10)
	b.Take(now, 5)
	b.Resize(now, 20, time.Second, 20)
	for i := range 10 {
		if w := b.Take(now, 1); w != 0 {
			t.Fatalf("unit %d of the resized bucket's free half held %v", i+1, w)
		}
	}
	if w := b.Take(now, 1); w == 0 {
		t.Fatal("the resized bucket forgot its level")
	}
}
