package breaker

import (
	"sync"
	"testing"
	"time"
)

// clock is a manual clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newBreaker(threshold int) (*Breaker, *clock) {
	c := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	return New(Policy{Threshold: threshold, Base: 5 * time.Second, Max: 30 * time.Second, Now: c.now}), c
}

func allow(t *testing.T, b *Breaker) Permit {
	t.Helper()
	p, ok := b.Allow()
	if !ok {
		t.Fatalf("not admitted in state %v", b.State())
	}
	return p
}

func refuse(t *testing.T, b *Breaker) {
	t.Helper()
	if _, ok := b.Allow(); ok {
		t.Fatalf("admitted in state %v", b.State())
	}
}

// trip fails b's attempts until it opens, and returns the cool-down.
func trip(t *testing.T, b *Breaker, threshold int) time.Duration {
	t.Helper()
	for i := 1; i <= threshold; i++ {
		d, opened := allow(t, b).Failure()
		if opened != (i == threshold) {
			t.Fatalf("failure %d of %d: opened %v", i, threshold, opened)
		}
		if opened {
			return d
		}
	}
	return 0
}

func TestOpensAfterThresholdConsecutiveFailures(t *testing.T) {
	b, _ := newBreaker(3)
	allow(t, b).Failure()
	allow(t, b).Failure()
	allow(t, b).Success() // not consecutive: starts over
	if d := trip(t, b, 3); d != 5*time.Second {
		t.Fatalf("first cool-down %v, want 5s", d)
	}
	if s := b.State(); s != Open {
		t.Fatalf("state %v, want open", s)
	}
	refuse(t, b)
}

func TestHalfOpenProbeClosesOnSuccess(t *testing.T) {
	b, c := newBreaker(1)
	trip(t, b, 1)
	c.advance(5*time.Second - time.Nanosecond)
	refuse(t, b)
	c.advance(time.Nanosecond)
	if s := b.State(); s != HalfOpen {
		t.Fatalf("state %v after the cool-down, want half-open", s)
	}
	p := allow(t, b)
	refuse(t, b) // one probe at a time
	if !p.Success() {
		t.Fatal("the probe's success did not close the breaker")
	}
	if s := b.State(); s != Closed {
		t.Fatalf("state %v, want closed", s)
	}
	allow(t, b)
	allow(t, b)
}

func TestFailedProbesGrowTheCooldownToTheCap(t *testing.T) {
	b, c := newBreaker(2)
	want := []time.Duration{5, 10, 15, 20, 25, 30, 30, 30}
	d := trip(t, b, 2)
	for i, w := range want {
		if d != w*time.Second {
			t.Fatalf("ejection %d: cool-down %v, want %v", i+1, d, w*time.Second)
		}
		c.advance(d)
		var opened bool
		d, opened = allow(t, b).Failure() // the probe fails
		if !opened {
			t.Fatalf("ejection %d: the failed probe did not open the breaker", i+1)
		}
	}
}

func TestEjectionsForgivenOverTimeClosed(t *testing.T) {
	b, c := newBreaker(1)
	// Three ejections, each soon after the last close: 5, 10, 15 s.
	for i, want := range []time.Duration{5, 10, 15} {
		d := trip(t, b, 1)
		if d != want*time.Second {
			t.Fatalf("ejection %d: %v, want %v", i+1, d, want*time.Second)
		}
		c.advance(d)
		allow(t, b).Success()
		c.advance(time.Second)
	}
	// 30 s closed (Max) forgives one of the three.
	c.advance(30 * time.Second)
	if d := trip(t, b, 1); d != 15*time.Second {
		t.Fatalf("cool-down %v, want 15s", d)
	}
	c.advance(15 * time.Second)
	allow(t, b).Success()
	// An hour closed forgives them all.
	c.advance(time.Hour)
	if d := trip(t, b, 1); d != 5*time.Second {
		t.Fatalf("cool-down %v after an hour closed, want the base 5s", d)
	}
}

func TestCancelledProbeFreesItsPlace(t *testing.T) {
	b, c := newBreaker(1)
	trip(t, b, 1)
	c.advance(5 * time.Second)
	p := allow(t, b)
	refuse(t, b)
	p.Cancel()
	if s := b.State(); s != HalfOpen {
		t.Fatalf("state %v after a cancelled probe, want half-open", s)
	}
	p = allow(t, b) // the place is free again
	if d, opened := p.Failure(); !opened || d != 10*time.Second {
		t.Fatalf("the next probe's failure: opened %v for %v, want 10s", opened, d)
	}
}

func TestCancelRecordsNothing(t *testing.T) {
	b, _ := newBreaker(2)
	allow(t, b).Failure()
	allow(t, b).Cancel()
	if _, opened := allow(t, b).Failure(); !opened {
		t.Fatal("a cancelled attempt broke the run of failures")
	}
}

// TestStalePermitsCountForNothing: attempts begun before the breaker
// opened cannot open it further, nor close it.
func TestStalePermitsCountForNothing(t *testing.T) {
	b, c := newBreaker(2)
	early := []Permit{allow(t, b), allow(t, b), allow(t, b), allow(t, b)}
	early[0].Failure()
	if _, opened := early[1].Failure(); !opened {
		t.Fatal("not opened")
	}
	if _, opened := early[2].Failure(); opened {
		t.Fatal("a late failure opened the breaker again")
	}
	if early[3].Success() {
		t.Fatal("a late success closed the breaker")
	}
	if s := b.State(); s != Open {
		t.Fatalf("state %v, want open", s)
	}
	c.advance(5 * time.Second)
	probe := allow(t, b)
	forced := b.Force()
	if !forced.Success() {
		t.Fatal("a forced success did not close the breaker")
	}
	if _, opened := probe.Failure(); opened {
		t.Fatal("the probe of a breaker closed meanwhile opened it")
	}
	probe.Cancel() // harmless
	allow(t, b)
}

func TestForceWhileOpen(t *testing.T) {
	b, c := newBreaker(1)
	trip(t, b, 1)
	since, out := b.OutSince()
	if !out || !since.Equal(c.now()) {
		t.Fatalf("OutSince %v %v", since, out)
	}
	c.advance(time.Second)
	refuse(t, b)
	p := b.Force()
	if d, opened := p.Failure(); !opened || d != 10*time.Second {
		t.Fatalf("a forced failure: opened %v for %v, want 10s", opened, d)
	}
	if since, _ := b.OutSince(); !since.Equal(c.now()) {
		t.Fatal("a forced failure did not restart the ejection")
	}
	// Two forced attempts at once: the first failure counts, not both.
	p1, p2 := b.Force(), b.Force()
	p1.Failure()
	if _, opened := p2.Failure(); opened {
		t.Fatal("a second forced failure of the same ejection counted")
	}
	if !b.Force().Success() {
		t.Fatal("a forced success did not close the breaker")
	}
	if _, out := b.OutSince(); out {
		t.Fatal("closed, yet out")
	}
}

func TestNilBreakerIsOff(t *testing.T) {
	var b *Breaker
	for range 10 {
		p, ok := b.Allow()
		if !ok {
			t.Fatal("a nil breaker refused")
		}
		p.Failure()
	}
	b.Force().Success()
	Permit{}.Cancel()
	if s := b.State(); s != Closed {
		t.Fatalf("state %v", s)
	}
}

func TestConcurrentUse(t *testing.T) {
	b, c := newBreaker(3)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 1000 {
				c.advance(time.Millisecond)
				p, ok := b.Allow()
				if !ok {
					p = b.Force()
				}
				switch (i + j) % 3 {
				case 0:
					p.Success()
				case 1:
					p.Failure()
				default:
					p.Cancel()
				}
			}
		}()
	}
	wg.Wait()
	_ = b.State().String()
}

// TestOnChange: every change of state is told, after the lock (OnChange
// may read the breaker), with the ejections and the cool-down.
func TestOnChange(t *testing.T) {
	c := &clock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	var (
		b       *Breaker
		changes []Change
	)
	b = New(Policy{Threshold: 2, Base: 5 * time.Second, Max: 30 * time.Second, Now: c.now, OnChange: func(ch Change) {
		changes = append(changes, ch)
		_ = b.State() // the lock is free
	}})
	trip(t, b, 2)
	c.advance(5 * time.Second)
	if _, opened := allow(t, b).Failure(); !opened { // the probe fails
		t.Fatal("a failed probe opens")
	}
	f := b.Force() // all out: forced, and it fails again
	f.Failure()
	c.advance(15 * time.Second)
	allow(t, b).Success()
	want := []Change{
		{From: Closed, To: Open, Ejections: 1, Cooldown: 5 * time.Second},
		{From: Open, To: HalfOpen, Ejections: 1},
		{From: HalfOpen, To: Open, Ejections: 2, Cooldown: 10 * time.Second},
		{From: Open, To: Open, Ejections: 3, Cooldown: 15 * time.Second},
		{From: Open, To: HalfOpen, Ejections: 3},
		{From: HalfOpen, To: Closed},
	}
	if len(changes) != len(want) {
		t.Fatalf("changes %+v, want %+v", changes, want)
	}
	for i := range want {
		if changes[i] != want[i] {
			t.Errorf("change %d: %+v, want %+v", i, changes[i], want[i])
		}
	}
}
