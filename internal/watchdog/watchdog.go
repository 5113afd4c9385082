// Package watchdog calls a func once a span of time has passed without the
// progress it is told of, as a stream's idle timeout needs: each Kick
// counts as progress, and the time is measured from the last one.
//
// Kicks are cheap (one clock read and one atomic store, no timer touched):
// the timer is set once per limit, and when it fires it looks at the last
// kick, re-arming itself for what is left if there was progress since. A
// nil *Watchdog is off: every method does nothing.
package watchdog

import (
	"sync"
	"sync/atomic"
	"time"
)

// Clock is what a Watchdog reads the time from and sets its timer with.
// Real is the system's; tests inject a fake to fire timers without
// sleeping.
type Clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is the part of *time.Timer a Watchdog uses.
type Timer interface {
	Stop() bool
	Reset(d time.Duration) bool
}

// Real is the system clock.
var Real Clock = realClock{}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Watchdog calls its func once, when its limit has passed since it was
// started, re-armed or last kicked, unless it was stopped first. The func
// may decline, returning false, when the silence is not the watched
// side's (a reader that was not waiting): the limit then counts again
// from then, as after a kick.
type Watchdog struct {
	clock Clock
	base  time.Time
	last  atomic.Int64 // the last kick (or start), in ns since base

	mu    sync.Mutex
	limit time.Duration
	fire  func() bool
	timer Timer
	state int // running, stopped or fired
}

const (
	running = iota
	stopped
	fired
)

// Start returns a running Watchdog that calls fire, on a goroutine of its
// own, once limit has passed without a Kick. limit must be positive.
func Start(clock Clock, limit time.Duration, fire func() bool) *Watchdog {
	w := &Watchdog{clock: clock, base: clock.Now(), limit: limit, fire: fire}
	w.mu.Lock()
	w.timer = clock.AfterFunc(limit, w.expire)
	w.mu.Unlock()
	return w
}

// Kick records progress: the limit counts again from now.
func (w *Watchdog) Kick() {
	if w != nil {
		w.last.Store(int64(w.clock.Now().Sub(w.base)))
	}
}

// Rearm gives a running Watchdog a new limit and func, counting from now,
// and reports whether it was still running: false if it already fired (or
// is firing) or was stopped, and then nothing changes.
func (w *Watchdog) Rearm(limit time.Duration, fire func() bool) bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != running {
		return false
	}
	w.limit, w.fire = limit, fire
	w.last.Store(int64(w.clock.Now().Sub(w.base)))
	w.timer.Reset(limit)
	return true
}

// Stop stops the Watchdog and its timer, and reports whether it stopped it
// before it fired: false if its func was called or is being called, or if
// it was stopped already.
func (w *Watchdog) Stop() bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != running {
		return false
	}
	w.state = stopped
	w.timer.Stop()
	return true
}

// Fired reports whether the Watchdog's func was called (or is being
// called) and did not decline.
func (w *Watchdog) Fired() bool {
	if w == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state == fired
}

// expire runs when the timer fires: the func if the limit has passed since
// the last kick, else the timer again for what is left.
func (w *Watchdog) expire() {
	w.mu.Lock()
	if w.state != running {
		w.mu.Unlock()
		return
	}
	idle := w.clock.Now().Sub(w.base) - time.Duration(w.last.Load())
	if left := w.limit - idle; left > 0 {
		w.timer.Reset(left)
		w.mu.Unlock()
		return
	}
	// Called under the lock, so that Stop, Rearm and Fired wait for its
	// verdict: fire must be quick and must not call the Watchdog.
	if w.fire() {
		w.state = fired
	} else {
		w.last.Store(int64(w.clock.Now().Sub(w.base)))
		w.timer.Reset(w.limit)
	}
	w.mu.Unlock()
}
