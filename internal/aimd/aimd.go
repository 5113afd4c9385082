// Package aimd is an adaptive concurrency limit: additive increase,
// multiplicative decrease, as TCP's congestion window. The limit halves
// when the server says it is overloaded (429, 503) and grows by one for
// each limit's worth of clean answers, between 1 and a ceiling. Latency
// is no signal: an LLM's latency follows the length of its output, not
// the server's load.
//
// It starts at its ceiling: unlike TCP it has no slow start, which would
// hold a new client's concurrent calls behind its first answers, seconds
// each for a long generation.
package aimd

import (
	"context"
	"sync"
)

// Limiter is one target's limit. A nil *Limiter admits everything. Safe
// for concurrent use.
type Limiter struct {
	mu       sync.Mutex
	limit    int
	ceiling  int
	inflight int
	clean    int    // clean answers since the limit last changed
	epoch    uint64 // bumped by each decrease
	waiters  []chan struct{}
}

// New returns a limiter starting at, and bounded by, ceiling (at least 1).
func New(ceiling int) *Limiter {
	ceiling = max(ceiling, 1)
	return &Limiter{limit: ceiling, ceiling: ceiling}
}

// Permit is an admitted attempt's place under the limit; Done gives it
// back.
type Permit struct {
	l     *Limiter
	epoch uint64
}

// Acquire waits for a place under the limit, bounded by ctx. It reports
// whether it had to wait.
func (l *Limiter) Acquire(ctx context.Context) (Permit, bool, error) {
	if l == nil {
		return Permit{}, false, nil
	}
	l.mu.Lock()
	if l.inflight < l.limit && len(l.waiters) == 0 {
		l.inflight++
		p := Permit{l, l.epoch}
		l.mu.Unlock()
		return p, false, nil
	}
	ch := make(chan struct{})
	l.waiters = append(l.waiters, ch)
	l.mu.Unlock()
	select {
	case <-ch: // granted: inflight counted by the granter
		l.mu.Lock()
		p := Permit{l, l.epoch}
		l.mu.Unlock()
		return p, true, nil
	case <-ctx.Done():
		l.mu.Lock()
		for i, w := range l.waiters {
			if w == ch {
				l.waiters = append(l.waiters[:i], l.waiters[i+1:]...)
				l.mu.Unlock()
				return Permit{}, true, ctx.Err()
			}
		}
		l.mu.Unlock()
		// Granted meanwhile: give the place back, unused.
		l.mu.Lock()
		l.inflight--
		l.wake()
		l.mu.Unlock()
		return Permit{}, true, ctx.Err()
	}
}

// Done gives the place back. overloaded says the server answered that it
// is: the limit halves, once for all the attempts admitted under the
// limit that failed (those admitted before a decrease do not decrease it
// again). A clean answer counts towards growth, however many calls run,
// so a limit cut to 1 grows back at the pace of its answers.
func (p Permit) Done(overloaded bool) {
	l := p.l
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inflight--
	switch {
	case overloaded && p.epoch == l.epoch:
		l.limit = max(l.limit/2, 1)
		l.epoch++
		l.clean = 0
	case !overloaded:
		if l.clean++; l.clean >= l.limit && l.limit < l.ceiling {
			l.limit++
			l.clean = 0
		}
	}
	l.wake()
}

// wake admits waiters, in order, while there is room under the limit.
func (l *Limiter) wake() {
	for l.inflight < l.limit && len(l.waiters) > 0 {
		close(l.waiters[0])
		l.waiters = l.waiters[1:]
		l.inflight++
	}
}

// Limit reports the current limit.
func (l *Limiter) Limit() int {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.limit
}
