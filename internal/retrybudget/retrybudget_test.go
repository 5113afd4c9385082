package retrybudget

import (
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func TestNilAllowsEverything(t *testing.T) {
	var b *Budget
	b.Request()
	if !b.Retry() {
		t.Fatal("a nil budget refused a retry")
	}
}

func TestFloorThenRatio(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	b := New(0.2, 1, c.now) // a floor of 10 retries per window
	for i := range 10 {
		if !b.Retry() {
			t.Fatalf("retry %d refused within the floor", i+1)
		}
	}
	if b.Retry() {
		t.Fatal("retry 11 allowed with no requests")
	}
	for range 10 {
		b.Request()
	}
	// 10 requests earn 2 retries.
	for range 2 {
		if !b.Retry() {
			t.Fatal("the ratio's retries refused")
		}
	}
	if b.Retry() {
		t.Fatal("a retry beyond floor + ratio allowed")
	}
}

func TestWindowSlides(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	b := New(0, 1, c.now)
	for range 10 {
		b.Retry()
	}
	if b.Retry() {
		t.Fatal("budget not spent")
	}
	c.t = c.t.Add(5 * time.Second)
	if b.Retry() {
		t.Fatal("retries counted 5 s ago forgotten already")
	}
	c.t = c.t.Add(5 * time.Second) // the first second has left the window
	if !b.Retry() {
		t.Fatal("retries outside the window still counted")
	}
}
