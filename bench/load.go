package main

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// outcome is what a batch of calls through one contender came to.
type outcome struct {
	calls, ok int
	lat       []time.Duration // per call, failed ones included
	okLat     []time.Duration
	wall      time.Duration
	firstErr  error
}

func (o outcome) successRate() float64 { return float64(o.ok) / float64(max(o.calls, 1)) }

// closedLoop makes n calls through c with conc workers, each starting its
// next call when the last one ends.
func closedLoop(c caller, n, conc int) outcome {
	var (
		next atomic.Int64
		mu   sync.Mutex
		o    = outcome{calls: n}
		wg   sync.WaitGroup
	)
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				t := time.Now()
				err := c.call(context.Background())
				d := time.Since(t)
				mu.Lock()
				o.record(d, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	o.wall = time.Since(start)
	return o
}

// openLoop starts a call through c every interval, n in all, whatever the
// calls in flight: arrivals do not wait for the client to recover.
func openLoop(c caller, n int, interval time.Duration) outcome {
	var (
		mu sync.Mutex
		o  = outcome{calls: n}
	)
	start := time.Now()
	arrive(n, interval, func() {
		t := time.Now()
		err := c.call(context.Background())
		d := time.Since(t)
		mu.Lock()
		o.record(d, err)
		mu.Unlock()
	})()
	o.wall = time.Since(start)
	return o
}

// arrive starts call on a goroutine of its own every interval, n in all,
// and returns once the last has started; the func it returns waits for
// them all to end.
func arrive(n int, interval time.Duration, call func()) (wait func()) {
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			call()
		}()
	}
	return wg.Wait
}

func (o *outcome) record(d time.Duration, err error) {
	o.lat = append(o.lat, d)
	if err != nil {
		if o.firstErr == nil {
			o.firstErr = err
		}
		return
	}
	o.ok++
	o.okLat = append(o.okLat, d)
}
