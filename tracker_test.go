package llmdrain

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTrackerZeroValue(t *testing.T) {
	var tr Tracker
	ctx, done, err := tr.Begin(context.Background())
	require.NoError(t, err)
	assert.Equal(t, 1, tr.InFlight())
	assert.NoError(t, ctx.Err())
	done()
	done() // idempotent
	assert.Equal(t, 0, tr.InFlight())
	assert.Error(t, ctx.Err(), "done releases the derived context")
	require.NoError(t, tr.Drain(context.Background()))
	assert.True(t, tr.Draining())
}

func TestTrackerBeginDerivesFromCaller(t *testing.T) {
	tr := NewTracker()
	parent, cancel := context.WithCancel(context.Background())
	ctx, done, err := tr.Begin(parent)
	require.NoError(t, err)
	defer done()
	cancel()
	assert.ErrorIs(t, ctx.Err(), context.Canceled)
}

func TestDrainRefusesNewCalls(t *testing.T) {
	tr := NewTracker()
	_, done, err := tr.Begin(context.Background())
	require.NoError(t, err)

	drained := make(chan error, 1)
	go func() { drained <- tr.Drain(context.Background()) }()
	waitFor(t, tr.Draining)

	ctx := context.Background()
	got, d2, err := tr.Begin(ctx)
	assert.ErrorIs(t, err, ErrDraining)
	assert.Equal(t, ctx, got)
	d2() // the no-op done is safe
	assert.Equal(t, 1, tr.InFlight(), "a refused call is not registered")

	select {
	case err := <-drained:
		t.Fatalf("drain returned %v with a call in flight", err)
	default:
	}
	done()
	require.NoError(t, <-drained)
}

// TestDrainReturnsWhenLastCallFinishes checks the drain is event-driven:
// it returns right after the last done, long before any poll interval or
// its own deadline. The bound is generous for a noisy machine; the
// benchmarks measure the real latency.
func TestDrainReturnsWhenLastCallFinishes(t *testing.T) {
	tr := NewTracker()
	var dones []func()
	for range 3 {
		_, done, err := tr.Begin(context.Background())
		require.NoError(t, err)
		dones = append(dones, done)
	}
	drained := make(chan time.Time, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		assert.NoError(t, tr.Drain(ctx))
		drained <- time.Now()
	}()
	waitFor(t, tr.Draining)
	for _, done := range dones[:2] {
		done()
	}
	select {
	case <-drained:
		t.Fatal("drain returned with a call still in flight")
	case <-time.After(20 * time.Millisecond):
	}
	last := time.Now()
	dones[2]()
	at := <-drained
	assert.Less(t, at.Sub(last), 50*time.Millisecond, "drain must return right after the last done")
}

func TestDrainWithNothingInFlight(t *testing.T) {
	tr := NewTracker()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // even an ended context: nothing to force
	require.NoError(t, tr.Drain(ctx))
}

func TestForcedDrainCancelsStragglers(t *testing.T) {
	tr := NewTracker()
	ctx1, done1, err := beginLabelled(tr, context.Background(), "POST /v1/chat/completions")
	require.NoError(t, err)
	ctx2, done2, err := tr.Begin(context.Background())
	require.NoError(t, err)

	// The callers return as soon as their context is cancelled.
	var wg sync.WaitGroup
	for _, c := range []struct {
		ctx  context.Context
		done func()
	}{{ctx1, done1}, {ctx2, done2}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-c.ctx.Done()
			c.done()
		}()
	}

	dctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = tr.Drain(dctx)
	wg.Wait()

	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	var fe *ForcedDrainError
	require.ErrorAs(t, err, &fe)
	require.Len(t, fe.Stragglers, 2)
	assert.Equal(t, "POST /v1/chat/completions", fe.Stragglers[0].Label)
	assert.Equal(t, 0, fe.Unfinished)
	assert.Contains(t, err.Error(), "2 calls in flight")
	assert.Contains(t, err.Error(), "POST /v1/chat/completions")
	assert.ErrorIs(t, context.Cause(ctx1), ErrForcedShutdown)
	assert.ErrorIs(t, context.Cause(ctx2), ErrForcedShutdown)
	assert.Less(t, time.Since(start), forceGrace, "stragglers that return promptly end the grace early")
	assert.Equal(t, 0, tr.InFlight())
}

func TestForcedDrainReportsUnfinished(t *testing.T) {
	tr := NewTracker()
	_, done, err := tr.Begin(context.Background())
	require.NoError(t, err)
	defer done()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	err = tr.Drain(ctx) // the caller never calls done: Drain is bounded by the grace
	elapsed := time.Since(start)
	var fe *ForcedDrainError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, 1, fe.Unfinished)
	assert.Contains(t, err.Error(), "1 still running")
	assert.GreaterOrEqual(t, elapsed, forceGrace)
	assert.Less(t, elapsed, forceGrace+5*time.Second)
}

func TestConcurrentDrainsAgree(t *testing.T) {
	tr := NewTracker()
	ctx, done, err := tr.Begin(context.Background())
	require.NoError(t, err)
	go func() { <-ctx.Done(); done() }()

	short, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	errs := make(chan error, 3)
	go func() { errs <- tr.Drain(context.Background()) }()
	go func() { errs <- tr.Drain(short) }()
	go func() { errs <- tr.Drain(context.Background()) }()
	var got []error
	for range 3 {
		got = append(got, <-errs)
	}
	for _, e := range got {
		assert.Same(t, got[0], e, "every drain reports the same forced outcome")
		var fe *ForcedDrainError
		assert.ErrorAs(t, e, &fe)
	}
	// A later drain agrees too.
	assert.Same(t, got[0], tr.Drain(context.Background()))
}

func TestRepeatedCleanDrains(t *testing.T) {
	tr := NewTracker()
	_, done, err := tr.Begin(context.Background())
	require.NoError(t, err)
	errs := make(chan error, 2)
	go func() { errs <- tr.Drain(context.Background()) }()
	go func() { errs <- tr.Drain(context.Background()) }()
	waitFor(t, tr.Draining)
	done()
	assert.NoError(t, <-errs)
	assert.NoError(t, <-errs)
	assert.NoError(t, tr.Drain(context.Background()))
}

// TestTrackerRace hammers Begin/done against a concurrent Drain: every call
// is either refused or admitted and waited for, never lost in between.
func TestTrackerRace(t *testing.T) {
	for range 20 {
		tr := NewTracker()
		var wg sync.WaitGroup
		var mu sync.Mutex
		admittedAfterDrainReturned := 0
		drained := make(chan struct{})
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, done, err := tr.Begin(context.Background())
					if errors.Is(err, ErrDraining) {
						return
					}
					select {
					case <-drained:
						mu.Lock()
						admittedAfterDrainReturned++
						mu.Unlock()
					default:
					}
					done()
				}
			}()
		}
		require.NoError(t, tr.Drain(context.Background()))
		close(drained)
		wg.Wait()
		assert.Zero(t, admittedAfterDrainReturned)
		assert.Zero(t, tr.InFlight())
	}
}

func TestForcedDrainErrorMessage(t *testing.T) {
	e := &ForcedDrainError{Cause: context.DeadlineExceeded}
	for i := range 7 {
		e.Stragglers = append(e.Stragglers, CallInfo{ID: uint64(i + 1)})
	}
	assert.Equal(t, "llmdrain: drain forced (context deadline exceeded) with 7 calls in flight: call #1, call #2, call #3, call #4, call #5, and 2 more", e.Error())
}

// waitFor waits, bounded, for a condition set by another goroutine that
// offers no event to wait on.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

// hold makes the first goroutine to reach each of the given points of tr
// stop there until release(point) is called; reached(point) is closed when
// it gets there. Other goroutines, and other points, pass.
type hold struct {
	reachedCh, releaseCh map[hookPoint]chan struct{}
	once                 map[hookPoint]*sync.Once
}

func holdAt(tr *Tracker, points ...hookPoint) *hold {
	h := &hold{map[hookPoint]chan struct{}{}, map[hookPoint]chan struct{}{}, map[hookPoint]*sync.Once{}}
	for _, p := range points {
		h.reachedCh[p], h.releaseCh[p], h.once[p] = make(chan struct{}), make(chan struct{}), new(sync.Once)
	}
	tr.hook = func(p hookPoint) {
		if once := h.once[p]; once != nil {
			once.Do(func() {
				close(h.reachedCh[p])
				<-h.releaseCh[p]
			})
		}
	}
	return h
}

func (h *hold) reached(p hookPoint) <-chan struct{} { return h.reachedCh[p] }
func (h *hold) release(p hookPoint)                 { close(h.releaseCh[p]) }

type beginResult struct {
	ctx  context.Context
	done func()
	err  error
}

// TestForcedDrainRefusesBeginItMissed holds a Begin after it counted itself
// (before the drain began) but before it registered its slot, until a
// forced drain has scanned the shards and found nothing. The Begin then
// sees the forced phase: nothing was sent yet, so it must be refused with
// ErrDraining, and the drain, which cancelled nothing, reports clean. (It
// used to be cancelled with ErrForcedShutdown while Drain returned nil.)
func TestForcedDrainRefusesBeginItMissed(t *testing.T) {
	tr := NewTracker()
	h := holdAt(tr, hookAdmitted, hookScanned)
	begun := make(chan beginResult, 1)
	go func() {
		ctx, done, err := tr.Begin(context.Background())
		begun <- beginResult{ctx, done, err}
	}()
	<-h.reached(hookAdmitted)

	expired, cancel := context.WithCancel(context.Background())
	cancel()
	drained := make(chan error, 1)
	go func() { drained <- tr.Drain(expired) }()
	<-h.reached(hookScanned)
	h.release(hookScanned) // the grace runs, waiting for the call
	h.release(hookAdmitted)

	r := <-begun
	if r.err == nil {
		// An admitted call, cancelled by a drain that did not see it.
		assert.ErrorIs(t, context.Cause(r.ctx), ErrForcedShutdown)
		r.done()
		t.Fatalf("a Begin the forced drain did not see was admitted and cancelled; Drain returned %v", <-drained)
	}
	err := <-drained
	assert.ErrorIs(t, r.err, ErrDraining)
	assert.NoError(t, r.ctx.Err(), "a refused Begin returns the caller's context untouched")
	r.done() // the no-op done
	assert.NoError(t, err, "nothing was cancelled: the drain is clean")
	assert.Zero(t, tr.InFlight())
}

// TestForcedDrainNamesBeginItSaw holds a Begin after it registered its slot
// but before it checked for a forced phase, until a forced drain has
// cancelled and reported the slot. The Begin must then be admitted with
// its cancelled context (the drain names it), not refused: the verdict
// must not name a call that was never admitted.
func TestForcedDrainNamesBeginItSaw(t *testing.T) {
	tr := NewTracker()
	h := holdAt(tr, hookRegistered, hookScanned)
	begun := make(chan beginResult, 1)
	go func() {
		ctx, done, err := beginLabelled(tr, context.Background(), "POST /v1/embeddings")
		begun <- beginResult{ctx, done, err}
	}()
	<-h.reached(hookRegistered)

	expired, cancel := context.WithCancel(context.Background())
	cancel()
	drained := make(chan error, 1)
	go func() { drained <- tr.Drain(expired) }()
	<-h.reached(hookScanned)
	h.release(hookScanned)
	h.release(hookRegistered)

	r := <-begun
	require.NoError(t, r.err, "the drain named this call: it must not be refused")
	assert.ErrorIs(t, context.Cause(r.ctx), ErrForcedShutdown)
	r.done()
	var fe *ForcedDrainError
	require.ErrorAs(t, <-drained, &fe)
	require.Len(t, fe.Stragglers, 1)
	assert.Equal(t, "POST /v1/embeddings", fe.Stragglers[0].Label)
	assert.Zero(t, fe.Unfinished)
	assert.Zero(t, tr.InFlight())
}

// TestForcedDrainUnfinishedCountsOnlyStragglers holds a Begin that counted
// itself before the drain began, but had registered nothing, through a
// forced drain's whole grace. Nothing was cancelled, so the drain is clean:
// the Begin, refused when it goes on, is no unfinished straggler. (It used
// to be reported as a forced drain with no straggler and 1 unfinished.)
func TestForcedDrainUnfinishedCountsOnlyStragglers(t *testing.T) {
	tr := NewTracker()
	h := holdAt(tr, hookAdmitted)
	begun := make(chan beginResult, 1)
	go func() {
		ctx, done, err := tr.Begin(context.Background())
		begun <- beginResult{ctx, done, err}
	}()
	<-h.reached(hookAdmitted)

	expired, cancel := context.WithCancel(context.Background())
	cancel()
	assert.NoError(t, tr.Drain(expired), "nothing was cancelled: the drain is clean")
	h.release(hookAdmitted)
	r := <-begun
	assert.ErrorIs(t, r.err, ErrDraining)
	r.done()
	assert.Zero(t, tr.InFlight())
}

// beginLabelled is Begin with a label, as the transport registers its calls.
func beginLabelled(tr *Tracker, ctx context.Context, label string) (context.Context, func(), error) {
	cctx, _, tk, err := tr.begin(ctx, label)
	if err != nil {
		return cctx, func() {}, err
	}
	return cctx, func() { tr.finish(tk) }, nil
}
