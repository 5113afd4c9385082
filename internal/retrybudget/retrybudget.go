// Package retrybudget bounds retries to a share of requests, per target, so
// that retries cannot multiply the load on a failing server. It is
// Finagle's RetryBudget (and Linkerd's): over a sliding window of TTL,
// retries may number up to Ratio of the requests plus MinPerSecond × TTL,
// a floor that lets a client with little traffic still retry. gRPC's
// retry throttling (proposal A6) is the same idea as a token bucket:
// each failure costs a token, each success earns a fraction back, and
// retries stop below half of the bucket.
package retrybudget

import (
	"sync"
	"sync/atomic"
	"time"
)

// TTL is the window over which requests and retries are counted:
// Finagle's default.
const TTL = 10 * time.Second

// slots splits TTL; a second each.
const slots = 10

// Budget is one target's retry budget. A nil *Budget is off: every retry
// is allowed. Safe for concurrent use.
type Budget struct {
	ratio   float64
	reserve float64 // MinPerSecond × TTL
	now     func() time.Time

	mu   sync.Mutex // for Retry, and a slot's turn to a new second
	slot [slots]counts
}

// counts is one second's. Requests are counted on every call, with an
// atomic add and no lock; retries, rare, under the Budget's lock.
type counts struct {
	sec      atomic.Int64 // the second counted; a slot of an older one is stale
	requests atomic.Int64
	retries  int64
}

// New returns a budget allowing ratio retries per request plus minPerSecond
// retries per second, counted over TTL, on the clock now (nil:
// time.Now).
func New(ratio, minPerSecond float64, now func() time.Time) *Budget {
	if now == nil {
		now = time.Now
	}
	return &Budget{ratio: ratio, reserve: minPerSecond * TTL.Seconds(), now: now}
}

// Request counts a call's first attempt, which earns Ratio of a retry.
func (b *Budget) Request() {
	if b == nil {
		return
	}
	sec := b.now().Unix()
	c := b.at(sec)
	if c.sec.Load() != sec {
		b.mu.Lock()
		b.turn(c, sec)
		b.mu.Unlock()
	}
	c.requests.Add(1)
}

// Retry reports whether a retry is within the budget, and if so counts
// it.
func (b *Budget) Retry() bool {
	if b == nil {
		return true
	}
	sec := b.now().Unix()
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.at(sec)
	b.turn(cur, sec)
	var req, ret int64
	for i := range b.slot {
		if c := &b.slot[i]; c.sec.Load() > sec-slots {
			req += c.requests.Load()
			ret += c.retries
		}
	}
	if float64(ret)+1 > b.reserve+b.ratio*float64(req) {
		return false
	}
	cur.retries++
	return true
}

// at returns the slot of second sec.
func (b *Budget) at(sec int64) *counts {
	return &b.slot[((sec%slots)+slots)%slots]
}

// turn makes c the slot of second sec, zeroed, unless it is already; with
// b.mu held. The requests are zeroed before the second is set: a Request
// that sees the new second counts in the new slot.
func (b *Budget) turn(c *counts, sec int64) {
	if c.sec.Load() == sec {
		return
	}
	c.requests.Store(0)
	c.retries = 0
	c.sec.Store(sec)
}
