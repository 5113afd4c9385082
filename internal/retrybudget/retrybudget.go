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

	mu    sync.Mutex
	slot  [slots]counts
	epoch [slots]int64 // the second each slot counts; stale slots are zeroed on use
}

type counts struct{ requests, retries int }

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
	b.mu.Lock()
	defer b.mu.Unlock()
	b.current().requests++
}

// Retry reports whether a retry is within the budget, and if so counts
// it.
func (b *Budget) Retry() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	cur := b.current()
	var req, ret int
	for _, c := range b.slot {
		req += c.requests
		ret += c.retries
	}
	if float64(ret)+1 > b.reserve+b.ratio*float64(req) {
		return false
	}
	cur.retries++
	return true
}

// current returns the slot of this second, zeroing the slots whose second
// has left the window.
func (b *Budget) current() *counts {
	sec := b.now().Unix()
	for i := range b.slot {
		if b.epoch[i] <= sec-slots {
			b.slot[i] = counts{}
		}
	}
	i := int(((sec % slots) + slots) % slots)
	if b.epoch[i] != sec {
		b.slot[i], b.epoch[i] = counts{}, sec
	}
	return &b.slot[i]
}
