package llmdrain

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/internal/watchdog"
)

// A call's attempts run in the call's one context until a timeout cuts
// one; the call then goes on in a new context (call.renew). These tests
// hold the promises that rest on that: a forced drain still reaches the
// call afterwards, and a cut attempt's late timer never ends the call.

// Item: a call whose attempt its AttemptTimeout cut, waiting for its
// next attempt, is cancelled by a forced drain at once and named in the
// drain's verdict, not left to sleep through its backoff.
func TestForcedDrainReachesCallAfterAttemptCut(t *testing.T) {
	srv, n := scriptedServer(t, headersThen(200, "application/json", okBody, 10, true, false), serveJSON)
	retrying := make(chan struct{}, 1)
	cl := scriptedClient(t, srv, Config{
		AttemptTimeout: 100 * time.Millisecond,
		MaxRetries:     3,
		Backoff:        func() backoff.BackOff { return backoff.NewConstantBackOff(time.Minute) },
		Hooks: &Hooks{AttemptDone: func(a AttemptInfo) {
			if a.Retry {
				retrying <- struct{}{}
			}
		}},
	})
	type result struct {
		err  error
		took time.Duration
	}
	done := make(chan result, 1)
	// A deadline past the backoff, so the wait is taken.
	callCtx, cancelCall := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancelCall()
	go func() {
		start := time.Now()
		_, err := cl.CreateChatCompletion(callCtx, userMsg("cut, then waiting"))
		done <- result{err, time.Since(start)}
	}()
	select {
	case <-retrying:
	case <-time.After(10 * time.Second):
		t.Fatal("the first attempt was not cut by its timeout")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	drainErr := cl.Tracker().Drain(ctx)
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the forced drain did not reach the call waiting after its cut attempt")
	}
	assert.ErrorIs(t, r.err, ErrForcedShutdown)
	assert.Less(t, r.took, 30*time.Second, "slept through its backoff")
	var fe *ForcedDrainError
	require.ErrorAs(t, drainErr, &fe)
	assert.Len(t, fe.Stragglers, 1, "the call is named")
	assert.Equal(t, int32(1), n.Load(), "no attempt after the drain")
	assert.Equal(t, 0, cl.Tracker().InFlight())
}

// Item: a forced drain that named a call before the call renewed its
// context (its attempt cut at the same moment) cancels the new context at
// once, with the drain's cause; a renew after done releases it.
func TestTrackerRenewAfterForcedDrain(t *testing.T) {
	tr := NewTracker()
	ctx, _, tk, err := tr.begin(context.Background(), "POST /v1/chat/completions")
	require.NoError(t, err)
	expired, cancel := context.WithCancel(context.Background())
	cancel()
	drained := make(chan error, 1)
	go func() { drained <- tr.Drain(expired) }()
	<-ctx.Done()
	require.ErrorIs(t, context.Cause(ctx), ErrForcedShutdown)

	renewed, rcancel := context.WithCancelCause(context.Background())
	tr.renew(tk, renewed, rcancel)
	require.Error(t, renewed.Err(), "the renewed context outlived the forced drain")
	assert.ErrorIs(t, context.Cause(renewed), ErrForcedShutdown)

	tr.finish(tk)
	var fe *ForcedDrainError
	require.ErrorAs(t, <-drained, &fe)
	assert.Len(t, fe.Stragglers, 1)

	late, lcancel := context.WithCancelCause(context.Background())
	tr.renew(tk, late, lcancel)
	assert.ErrorIs(t, late.Err(), context.Canceled, "a renew after done is released")
}

// firingClock is a watchdog.Clock whose timers fire only when a test
// fires them, each at most once, whatever Stop said.
type firingClock struct {
	mu     sync.Mutex
	timers []*firingTimer
}

type firingTimer struct{ f func() }

func (c *firingClock) AfterFunc(_ time.Duration, f func()) watchdog.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &firingTimer{f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *firingTimer) Stop() bool                 { return true }
func (t *firingTimer) Reset(_ time.Duration) bool { return true }

func (c *firingClock) timer(i int) *firingTimer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i >= len(c.timers) {
		return nil
	}
	return c.timers[i]
}

// Item: the AttemptTimeout timer of an attempt that was cut, firing late
// (after the call went on in a new context, before its next attempt, and
// again while that attempt runs), ends nothing: the next attempt is
// answered.
func TestLateTimerOfCutAttemptEndsNothing(t *testing.T) {
	gate := make(chan struct{})
	srv, n := scriptedServer(t,
		headersThen(200, "application/json", okBody, 10, true, false),
		func(w http.ResponseWriter, r *http.Request, stop <-chan struct{}) {
			<-gate // the second attempt answers once the late timer fired
			serveJSON(w, r, stop)
		})
	clock := &firingClock{}
	answered := make(chan struct{}, 2)
	ht := &http.Transport{}
	t.Cleanup(ht.CloseIdleConnections)
	base := roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := ht.RoundTrip(r)
		answered <- struct{}{} // the headers are in: a cut now is not silence
		return resp, err
	})
	cl := scriptedClient(t, srv, Config{HTTPClient: &http.Client{Transport: base}, AttemptTimeout: time.Hour, FirstTokenTimeout: -1, MaxRetries: 1,
		Hooks: &Hooks{AttemptDone: func(a AttemptInfo) {
			if a.Attempt == 1 {
				// Judged, its context renewed, the wait not begun.
				clock.timer(0).f()
			}
		}}})
	cl.http.Transport.(*transport).clock = clock
	done := make(chan error, 1)
	go func() {
		_, err := cl.CreateChatCompletion(callCtx(t), userMsg("cut once"))
		done <- err
	}()
	// The first attempt's timer, once it has its headers: fire it.
	<-answered
	clock.timer(0).f()
	require.Eventually(t, func() bool { return n.Load() == 2 && clock.timer(1) != nil }, 10*time.Second, time.Millisecond)
	clock.timer(0).f() // late again: the second attempt is in flight
	close(gate)
	select {
	case err := <-done:
		require.NoError(t, err, "a late timer of the cut attempt ended the call")
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not end")
	}
	assert.Equal(t, int32(2), n.Load())
	assert.Equal(t, 0, cl.Tracker().InFlight())
}
