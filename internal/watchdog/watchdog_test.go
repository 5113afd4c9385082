package watchdog

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock fires its timers, on the caller's goroutine, when advanced
// past them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	f    func()
	live bool
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), f: f, live: true}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.live
	t.live = false
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	was := t.live
	t.live, t.at = true, t.c.now.Add(d)
	return was
}

// advance moves the clock by d, firing the timers due on the way.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	end := c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var next *fakeTimer
		for _, t := range c.timers {
			if t.live && !t.at.After(end) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			c.now = end
			c.mu.Unlock()
			return
		}
		c.now, next.live = next.at, false
		c.mu.Unlock()
		next.f()
	}
}

func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if t.live {
			n++
		}
	}
	return n
}

func newFake() *fakeClock { return &fakeClock{now: time.Unix(1000, 0)} }

func TestFiresAfterLimitWithoutKick(t *testing.T) {
	c := newFake()
	var n atomic.Int32
	w := Start(c, 10*time.Second, func() bool { n.Add(1); return true })
	c.advance(9 * time.Second)
	if n.Load() != 0 || w.Fired() {
		t.Fatal("fired before its limit")
	}
	c.advance(time.Second)
	if n.Load() != 1 || !w.Fired() {
		t.Fatal("did not fire at its limit")
	}
	c.advance(time.Hour)
	if n.Load() != 1 {
		t.Fatal("fired twice")
	}
	if w.Stop() {
		t.Fatal("Stop after firing reported it stopped it first")
	}
}

func TestKickPostpones(t *testing.T) {
	c := newFake()
	var n atomic.Int32
	w := Start(c, 10*time.Second, func() bool { n.Add(1); return true })
	for range 5 { // 5 × 8 s of steady progress: 40 s, never 10 s idle
		c.advance(8 * time.Second)
		w.Kick()
	}
	if n.Load() != 0 {
		t.Fatal("fired despite kicks within the limit")
	}
	c.advance(10 * time.Second)
	if n.Load() != 0 {
		t.Fatal("fired 10 s after the last kick, 8 s into a tick")
	}
	c.advance(2500 * time.Millisecond)
	if n.Load() != 1 {
		t.Fatal("did not fire within 12.5 s of the last kick")
	}
}

func TestStopBeforeFiring(t *testing.T) {
	c := newFake()
	var n atomic.Int32
	w := Start(c, time.Second, func() bool { n.Add(1); return true })
	if !w.Stop() {
		t.Fatal("Stop of a running watchdog reported false")
	}
	if c.pending() != 0 {
		t.Fatal("timer left running after Stop")
	}
	c.advance(time.Hour)
	if n.Load() != 0 || w.Fired() {
		t.Fatal("fired after Stop")
	}
	if w.Stop() || w.Rearm(time.Second, func() bool { return true }) {
		t.Fatal("a stopped watchdog is not running")
	}
}

func TestRearmChangesLimitAndFunc(t *testing.T) {
	c := newFake()
	var first, second atomic.Int32
	w := Start(c, 10*time.Second, func() bool { first.Add(1); return true })
	c.advance(9 * time.Second)
	if !w.Rearm(3*time.Second, func() bool { second.Add(1); return true }) {
		t.Fatal("Rearm of a running watchdog reported false")
	}
	c.advance(2 * time.Second) // 11 s from start, 2 s from Rearm
	if first.Load() != 0 || second.Load() != 0 {
		t.Fatal("fired before the new limit")
	}
	c.advance(time.Second)
	if first.Load() != 0 || second.Load() != 1 {
		t.Fatalf("want the new func at the new limit: first %d, second %d", first.Load(), second.Load())
	}
}

func TestNilIsOff(t *testing.T) {
	var w *Watchdog
	w.Kick()
	if w.Stop() || w.Fired() || w.Rearm(time.Second, func() bool { return true }) {
		t.Fatal("a nil watchdog reported running or fired")
	}
}

func TestRealClock(t *testing.T) {
	done := make(chan struct{})
	w := Start(Real, time.Millisecond, func() bool { close(done); return true })
	<-done
	if !w.Fired() {
		t.Fatal("not marked fired")
	}
	w2 := Start(Real, time.Hour, func() bool { t.Error("fired"); return true })
	w2.Kick()
	if !w2.Stop() {
		t.Fatal("Stop reported false")
	}
}

func TestDeclinedFireCountsAgain(t *testing.T) {
	c := newFake()
	var asked, acted atomic.Int32
	waiting := false
	w := Start(c, 10*time.Second, func() bool {
		asked.Add(1)
		if !waiting {
			return false
		}
		acted.Add(1)
		return true
	})
	c.advance(25 * time.Second) // declined at 10 s and at 20 s
	if asked.Load() != 2 || acted.Load() != 0 || w.Fired() {
		t.Fatalf("asked %d, acted %d", asked.Load(), acted.Load())
	}
	waiting = true
	c.advance(4 * time.Second) // 9 s after the last decline
	if acted.Load() != 0 {
		t.Fatal("a decline did not count as a kick")
	}
	c.advance(time.Second)
	if acted.Load() != 1 || !w.Fired() {
		t.Fatal("did not fire once waiting")
	}
}
