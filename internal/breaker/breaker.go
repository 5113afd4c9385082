// Package breaker is a circuit breaker for one target. Closed, it lets
// every attempt through and counts consecutive failures; the Threshold-th
// opens it for a cool-down of Base times the number of ejections in a row,
// capped at Max; then it is half-open and lets a single probe through,
// whose success closes it and whose failure opens it again, for longer.
//
// An attempt asks with Allow and gets a Permit, which it releases exactly
// once with Success, Failure or Cancel. A permit counts only in the state
// it was given in: an attempt that began before the breaker opened cannot
// open it again, nor close it. A cancelled probe frees the half-open place
// and records nothing.
//
// The breaker reads no clock but the one it is given, so its tests need
// no sleeps. A nil *Breaker is off: it admits every attempt and records
// nothing.
package breaker

import (
	"sync"
	"time"
)

// State is where a breaker stands.
type State uint8

const (
	// Closed admits every attempt.
	Closed State = iota
	// Open admits none until its cool-down ends.
	Open
	// HalfOpen admits one probe at a time.
	HalfOpen
)

func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half-open"
	}
	return "state(?)"
}

// Policy is what a breaker is made of.
type Policy struct {
	// Threshold is how many consecutive failed attempts open a closed
	// breaker; below 1 counts as 1.
	Threshold int
	// Base is the cool-down of a first ejection; ejection n in a row
	// lasts n × Base.
	Base time.Duration
	// Max caps the cool-down. One ejection is forgiven for each Max spent
	// closed, so a target that has worked that long starts over nearer
	// Base. Below Base counts as Base.
	Max time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// OnChange, if set, is told of every change of state, after the
	// breaker's lock is released: a slow OnChange slows the attempt that
	// made the change, never the others. Changes made at once by
	// different attempts may be told out of order.
	OnChange func(Change)
}

// Change describes a move of a breaker from one state to another.
type Change struct {
	From, To State
	// Ejections is the ejections in a row, counting this one when To is
	// Open.
	Ejections int
	// Cooldown is how long the breaker stays open; 0 unless To is Open.
	Cooldown time.Duration
}

// Breaker is one target's circuit breaker; see the package comment. It is
// safe for concurrent use. Make it with New.
type Breaker struct {
	threshold int
	base, max time.Duration
	now       func() time.Time
	onChange  func(Change)

	mu        sync.Mutex
	state     State
	gen       uint64 // moves on with every change of state: older permits count for nothing
	fails     int    // consecutive failures while closed
	ejections int    // ejections in a row, forgiven over time spent closed
	closedAt  time.Time
	openedAt  time.Time // when it last opened
	until     time.Time // when its cool-down ends
	probing   bool      // a half-open probe is out
}

// New returns a closed breaker with policy p.
func New(p Policy) *Breaker {
	b := &Breaker{threshold: max(p.Threshold, 1), base: p.Base, max: max(p.Max, p.Base), now: p.Now, onChange: p.OnChange}
	if b.now == nil {
		b.now = time.Now
	}
	b.closedAt = b.now()
	return b
}

type kind uint8

const (
	regular kind = iota // given while closed
	probe               // the half-open place
	forced              // given by Force
)

// Permit is an attempt let through by a breaker. Release it exactly once,
// with Success, Failure or Cancel. The zero Permit, and those of a nil
// Breaker, record nothing.
type Permit struct {
	b    *Breaker
	gen  uint64
	kind kind
}

// Allow reports whether an attempt may go through now, with the permit it
// must release. A closed breaker always admits; an open one admits nothing
// until its cool-down ends, and then, half-open, one probe at a time.
func (b *Breaker) Allow() (Permit, bool) {
	if b == nil {
		return Permit{}, true
	}
	b.mu.Lock()
	var ch *Change
	defer b.notify(&ch)
	defer b.mu.Unlock()
	if b.state == Open && !b.now().Before(b.until) {
		ch = b.set(HalfOpen)
	}
	switch b.state {
	case Closed:
		return Permit{b: b, gen: b.gen, kind: regular}, true
	case HalfOpen:
		if !b.probing {
			b.probing = true
			return Permit{b: b, gen: b.gen, kind: probe}, true
		}
	}
	return Permit{}, false
}

// Force lets an attempt through whatever the state, for when no target
// would admit one: it counts as a probe that does not take the half-open
// place. Its success closes the breaker; its failure opens it again from
// now, for longer.
func (b *Breaker) Force() Permit {
	if b == nil {
		return Permit{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == Closed {
		return Permit{b: b, gen: b.gen, kind: regular}
	}
	return Permit{b: b, gen: b.gen, kind: forced}
}

// State returns the breaker's state now (an open breaker whose cool-down
// has ended is half-open).
func (b *Breaker) State() State {
	if b == nil {
		return Closed
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == Open && !b.now().Before(b.until) {
		return HalfOpen
	}
	return b.state
}

// OutSince reports when the breaker last opened, and false if it is
// closed: of targets all out, the one out longest is the likeliest to be
// back.
func (b *Breaker) OutSince() (time.Time, bool) {
	if b == nil {
		return time.Time{}, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.openedAt, b.state != Closed
}

// Success records that the attempt's target answered. A probe's (or a
// forced attempt's) success closes the breaker, which Success reports.
func (p Permit) Success() (closed bool) {
	b := p.b
	if b == nil {
		return false
	}
	b.mu.Lock()
	var ch *Change
	defer b.notify(&ch)
	defer b.mu.Unlock()
	if p.gen != b.gen {
		return false
	}
	switch p.kind {
	case regular:
		b.fails = 0
		return false
	default:
		b.closedAt = b.now()
		ch = b.set(Closed)
		return true
	}
}

// Failure records that the attempt failed. The Threshold-th failure in a
// row of a closed breaker opens it, as does a probe's (or a forced
// attempt's) failure; Failure then reports the cool-down.
func (p Permit) Failure() (cooldown time.Duration, opened bool) {
	b := p.b
	if b == nil {
		return 0, false
	}
	b.mu.Lock()
	var ch *Change
	defer b.notify(&ch)
	defer b.mu.Unlock()
	if p.gen != b.gen {
		return 0, false
	}
	now := b.now()
	if p.kind == regular {
		if b.fails++; b.fails < b.threshold {
			return 0, false
		}
		// Forgive one ejection per Max spent closed since the last one.
		if b.max > 0 {
			b.ejections = max(b.ejections-int(now.Sub(b.closedAt)/b.max), 0)
		}
	}
	if time.Duration(b.ejections)*b.base < b.max { // no further once at the cap
		b.ejections++
	}
	d := min(time.Duration(b.ejections)*b.base, b.max)
	b.openedAt, b.until = now, now.Add(d)
	if ch = b.set(Open); ch != nil {
		ch.Cooldown = d
	}
	return d, true
}

// Cancel releases the permit recording nothing: the attempt said nothing
// about the target (its caller gave up). A cancelled probe frees the
// half-open place for the next attempt.
func (p Permit) Cancel() {
	b := p.b
	if b == nil || p.kind != probe {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if p.gen == b.gen {
		b.probing = false
	}
}

// set moves the breaker to s, ending every permit given before. It
// returns the change for notify, nil without OnChange: none is made then.
func (b *Breaker) set(s State) *Change {
	from := b.state
	b.state = s
	b.gen++
	b.fails = 0
	b.probing = false
	if b.onChange == nil {
		return nil
	}
	ch := &Change{From: from, To: s}
	if s != Closed {
		ch.Ejections = b.ejections
	}
	return ch
}

// notify tells OnChange of *ch, if any; deferred before the unlock, so
// run after it.
func (b *Breaker) notify(ch **Change) {
	if *ch != nil {
		b.onChange(**ch)
	}
}
