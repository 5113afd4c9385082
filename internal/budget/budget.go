// Package budget caps spending. Work reserves its worst-case cost before
// it starts and settles with its real cost once done, so that spending
// never exceeds the cap while the reservations were worst cases, however
// many pieces of work run at once. Amounts are whole units (llmdrain
// counts picodollars), so the cap holds exactly.
package budget

import (
	"context"
	"errors"
	"math"
	"sync"
)

// ErrExceeded is Reserve's error when the reservation does not fit.
var ErrExceeded = errors.New("budget exceeded")

// Budget is a cap on spending. A nil *Budget is no cap: every
// reservation is granted and nothing is counted. Its methods are safe for
// concurrent use.
type Budget struct {
	mu       sync.Mutex
	max      int64
	spent    int64         // settled
	reserved int64         // granted and not settled yet
	holders  int           // reservations granted and not settled yet
	queue    []*waiter     // reservations waiting, first come first served
	changed  chan struct{} // closed and replaced when the state changes
	sticky   bool
	refused  bool // a reservation was refused; with sticky, every later one is
}

type waiter struct{ n int64 }

// New returns a budget of max units, max >= 0. With sticky, once a
// reservation has been refused every later one is refused too: the budget
// is done, as a batch that must stop where its money ran out needs;
// without, a later reservation that fits is granted.
func New(max int64, sticky bool) *Budget {
	return &Budget{max: max, sticky: sticky, changed: make(chan struct{})}
}

// Reserve takes n units (n >= 0) from the budget for a piece of work, to
// be given back by Settle. Reservations are granted in the order they
// were asked for. One that fits in what is neither spent nor reserved is
// granted at once; one that does not waits while others are outstanding,
// since they may settle for less than they reserved; it is refused with
// ErrExceeded when it cannot fit even once every outstanding one has
// settled at no cost (the spent part alone leaves too little), or when
// none is left outstanding and it still does not fit. If ctx ends first,
// Reserve returns ctx's error and takes nothing.
func (b *Budget) Reserve(ctx context.Context, n int64) error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	if len(b.queue) == 0 {
		if ok, done := b.tryLocked(n); done {
			b.mu.Unlock()
			return result(ok)
		}
	}
	w := &waiter{n: n}
	b.queue = append(b.queue, w)
	for {
		if b.queue[0] == w {
			if ok, done := b.tryLocked(n); done {
				b.queue = b.queue[1:]
				b.broadcastLocked()
				b.mu.Unlock()
				return result(ok)
			}
		}
		ch := b.changed
		b.mu.Unlock()
		select {
		case <-ch:
			b.mu.Lock()
		case <-ctx.Done():
			b.mu.Lock()
			for i, q := range b.queue {
				if q == w {
					b.queue = append(b.queue[:i:i], b.queue[i+1:]...)
					break
				}
			}
			b.broadcastLocked()
			b.mu.Unlock()
			return ctx.Err()
		}
	}
}

// TryReserve is Reserve without the wait: it takes n units if they fit
// in what is neither spent nor reserved and no reservation is waiting,
// and returns ErrExceeded otherwise.
func (b *Budget) TryReserve(n int64) error {
	if b == nil {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 {
		if ok, done := b.tryLocked(n); done {
			return result(ok)
		}
	}
	return ErrExceeded
}

func result(ok bool) error {
	if ok {
		return nil
	}
	return ErrExceeded
}

// tryLocked grants n if it fits, or refuses it if it never can; done is
// false when it must wait for outstanding reservations to settle.
func (b *Budget) tryLocked(n int64) (ok, done bool) {
	switch {
	case b.sticky && b.refused, b.spent+n > b.max || n < 0:
		b.refused = true
		return false, true
	case b.spent+b.reserved+n <= b.max:
		b.reserved += n
		b.holders++
		return true, true
	case b.holders == 0:
		b.refused = true // unreachable: spent+n <= max then
		return false, true
	}
	return false, false
}

// broadcastLocked wakes the reservations waiting, to look again. Only
// they hold the channel, taken under the lock: with none, there is
// nothing to wake and nothing to allocate.
func (b *Budget) broadcastLocked() {
	if len(b.queue) == 0 {
		return
	}
	close(b.changed)
	b.changed = make(chan struct{})
}

// Settle ends a reservation of n units whose work really cost actual,
// which is spent. When actual exceeds n the excess is spent too: the cap
// then holds only as far as the reservations were worst cases.
func (b *Budget) Settle(n, actual int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.reserved -= n
	b.holders--
	b.spent = add(b.spent, actual)
	b.broadcastLocked()
	b.mu.Unlock()
}

// Spend counts actual units spent without a reservation: spending done
// before the budget was made, such as a resumed batch's earlier runs.
func (b *Budget) Spend(actual int64) {
	if b == nil {
		return
	}
	b.mu.Lock()
	b.spent = add(b.spent, actual)
	b.broadcastLocked()
	b.mu.Unlock()
}

// add is a + b for amounts not negative, saturating rather than wrapping
// around: an absurd cost (a hostile server's usage) must not make the
// spending negative.
func add(a, b int64) int64 {
	if b < 0 {
		b = 0
	}
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// Spent returns the units settled so far; 0 for a nil Budget.
func (b *Budget) Spent() int64 {
	if b == nil {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.spent
}

// Max returns the cap; 0 for a nil Budget.
func (b *Budget) Max() int64 {
	if b == nil {
		return 0
	}
	return b.max
}
