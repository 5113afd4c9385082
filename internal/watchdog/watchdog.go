// Package watchdog calls a func once a span of time has passed without the
// progress it is told of, as a stream's idle timeout needs: each Kick
// counts as progress.
//
// Kicks are as cheap as can be, one atomic store, no clock read and no
// timer touched: they come with every event of a stream. The timer ticks
// four times per limit instead, and the func is called at the first tick
// that ends four quiet quarters in a row: between limit and 1.25 × limit
// after the last kick. A nil *Watchdog is off: every method does nothing.
package watchdog

import (
	"sync"
	"sync/atomic"
	"time"
)

// Clock is what a Watchdog sets its timer with. Real is the system's;
// tests inject a fake to fire timers without sleeping.
type Clock interface {
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

func (realClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Watchdog calls its func once, when its limit (up to a quarter more) has
// passed since it was started, re-armed or last kicked, unless it was
// stopped first. The func may decline, returning false, when the silence
// is not the watched side's (a reader that was not waiting): the limit
// then counts again from then, as after a kick.
type Watchdog struct {
	kicked atomic.Bool // since the last tick

	mu    sync.Mutex
	limit time.Duration
	quiet int // ticks in a row without a kick
	fire  func() bool
	timer Timer
	state int // running, stopped or fired
}

const (
	running = iota
	stopped
	fired
)

// ticks is how many times the timer ticks per limit.
const ticks = 4

// Start returns a running Watchdog that calls fire, on a goroutine of its
// own, once limit has passed without a Kick. limit must be positive.
func Start(clock Clock, limit time.Duration, fire func() bool) *Watchdog {
	w := &Watchdog{limit: limit, fire: fire}
	w.mu.Lock()
	w.timer = clock.AfterFunc(tick(limit), w.expire)
	w.mu.Unlock()
	return w
}

func tick(limit time.Duration) time.Duration { return max(limit/ticks, 1) }

// Kick records progress: the limit counts again from about now.
func (w *Watchdog) Kick() {
	if w != nil && !w.kicked.Load() {
		w.kicked.Store(true)
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
	w.limit, w.fire, w.quiet = limit, fire, 0
	w.kicked.Store(false)
	w.timer.Reset(tick(limit))
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

// expire runs at each tick: the func if the limit has passed without a
// kick, else the timer again.
func (w *Watchdog) expire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state != running {
		return
	}
	if w.kicked.Swap(false) {
		w.quiet = 0
	} else {
		w.quiet++
	}
	if w.quiet < ticks {
		w.timer.Reset(tick(w.limit))
		return
	}
	// Called under the lock, so that Stop, Rearm and Fired wait for its
	// verdict: fire must be quick and must not call the Watchdog.
	if w.fire() {
		w.state = fired
		return
	}
	w.quiet = 0
	w.timer.Reset(tick(w.limit))
}
