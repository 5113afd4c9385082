// Package gcra is the generic cell rate algorithm (GCRA), a token bucket
// kept as one timestamp: the theoretical arrival time (TAT) of the next
// unit. A bucket allows Rate units per Period with a burst of Burst; a
// draw of n units is admitted when it would not push the TAT further than
// Burst units ahead of now, and otherwise tells how long until it would.
// It is the algorithm of go-redis/redis_rate, so an in-process bucket and
// a Redis one pace alike.
package gcra

import "time"

// Bucket is one GCRA bucket. The zero value is unusable; make one with
// New. It is not safe for concurrent use: its owner locks.
type Bucket struct {
	interval time.Duration // the time one unit takes: Period / Rate
	burst    time.Duration // how far ahead of now the TAT may run: Burst × interval
	tat      time.Time
}

// New returns a bucket of rate units per period, at most burst at once
// (burst < 1 is taken as 1). rate must be positive.
func New(rate int, period time.Duration, burst int) *Bucket {
	if burst < 1 {
		burst = 1
	}
	iv := period / time.Duration(rate)
	if iv <= 0 {
		iv = 1
	}
	return &Bucket{interval: iv, burst: time.Duration(burst) * iv}
}

// Take draws n units at now. It returns 0 when they were drawn, or how
// long to wait before the same draw would be admitted (nothing drawn). A
// draw larger than the burst is admitted once the bucket is full, so that
// it waits rather than never passing.
func (b *Bucket) Take(now time.Time, n int) time.Duration {
	tat := b.tat
	if tat.Before(now) {
		tat = now
	}
	cost := time.Duration(n) * b.interval
	newTAT := tat.Add(cost)
	allowAt := newTAT.Add(-max(b.burst, cost))
	if d := allowAt.Sub(now); d > 0 {
		return d
	}
	b.tat = newTAT
	return 0
}

// Resize changes the bucket's rate, period and burst, keeping the share
// of the burst in use: a limit that changes keeps its bucket's level.
func (b *Bucket) Resize(now time.Time, rate int, period time.Duration, burst int) {
	nb := New(rate, period, burst)
	if b.tat.After(now) {
		used := float64(b.tat.Sub(now)) / float64(b.burst)
		nb.tat = now.Add(time.Duration(used * float64(nb.burst)))
	}
	*b = *nb
}

// Give returns n units drawn earlier but not used (an estimate that was
// too high), as far as the bucket is ahead of now.
func (b *Bucket) Give(now time.Time, n int) {
	b.tat = b.tat.Add(-time.Duration(n) * b.interval)
	if b.tat.Before(now) {
		b.tat = now
	}
}

// Charge draws n more units at once, without asking: usage found to be
// larger than drawn. It may push the TAT beyond the burst; later draws
// then wait for it.
func (b *Bucket) Charge(now time.Time, n int) {
	if b.tat.Before(now) {
		b.tat = now
	}
	b.tat = b.tat.Add(time.Duration(n) * b.interval)
}
