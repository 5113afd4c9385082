package llmdrain

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClassify(t *testing.T) {
	live := context.Background()
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	status := func(code int) *http.Response { return &http.Response{StatusCode: code, Header: http.Header{}} }
	cases := []struct {
		name string
		ctx  context.Context
		resp *http.Response
		err  error
		want outcome
	}{
		{"200", live, status(200), nil, healthy},
		{"400 is final, the target alive", live, status(400), nil, healthy},
		{"404", live, status(404), nil, healthy},
		{"429", live, status(429), nil, overloaded},
		{"503", live, status(503), nil, overloaded},
		{"500", live, status(500), nil, broken},
		{"502", live, status(502), nil, broken},
		{"408", live, status(408), nil, broken},
		{"refused", live, nil, syscall.ECONNREFUSED, broken},
		{"attempt timeout", live, nil, errAttemptTimeout, broken},
		{"silent", live, nil, fmt.Errorf("after 1m0s: %w", errSilent), silent},
		{"TLS", live, nil, fmt.Errorf("tls: %w", x509.UnknownAuthorityError{}), fatal},
		{"caller gone, with an answer", ended, status(200), nil, abandoned},
		{"caller gone, with an error", ended, nil, context.Canceled, abandoned},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, classify(c.ctx, c.resp, c.err, DefaultShouldRetry), c.name)
	}

	calls := 0
	counting := func(*http.Response, error) bool { calls++; return true }
	classify(live, status(500), nil, counting)
	assert.Equal(t, 1, calls, "the caller's ShouldRetry is asked once per attempt")
	assert.Equal(t, healthy, classify(live, status(500), nil, func(*http.Response, error) bool { return false }),
		"the caller's ShouldRetry decides what is final")
}

func TestDecide(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	constant := func(d time.Duration) func() backoff.BackOff {
		return func() backoff.BackOff { return backoff.NewConstantBackOff(d) }
	}
	p := retryPolicy{maxRetries: 3, maxRetryAfter: time.Minute, newBackoff: constant(100 * time.Millisecond)}
	hint := func(k, v string) *http.Response {
		h := http.Header{}
		h.Set(k, v)
		return &http.Response{StatusCode: 429, Header: h}
	}

	var bo backoff.BackOff
	wait, st := p.decide(now, 1, nil, &bo, time.Time{})
	require.Nil(t, st)
	assert.Equal(t, 100*time.Millisecond, wait, "no hint: the backoff")
	require.NotNil(t, bo, "made on first use")

	bo = nil
	wait, st = p.decide(now, 1, hint("Retry-After", "2"), &bo, time.Time{})
	require.Nil(t, st)
	assert.Equal(t, 2*time.Second, wait, "a hint longer than the backoff is the wait")

	bo = nil
	wait, st = p.decide(now, 1, hint("retry-after-ms", "10"), &bo, time.Time{})
	require.Nil(t, st)
	assert.Equal(t, 100*time.Millisecond, wait, "a hint is a floor under the backoff")

	_, st = p.decide(now, 4, nil, &bo, time.Time{})
	require.NotNil(t, st)
	assert.Equal(t, "gave up", st.why)
	assert.False(t, st.deadline)

	_, st = p.decide(now, 1, hint("Retry-After", "120"), &bo, time.Time{})
	require.NotNil(t, st)
	assert.Contains(t, st.why, "above the 1m0s cap")

	_, st = p.decide(now, 1, hint("Retry-After", "1"), &bo, now.Add(500*time.Millisecond))
	require.NotNil(t, st)
	assert.Equal(t, "a retry in 1s would pass the deadline", st.why)
	assert.True(t, st.deadline, "only the deadline stood in the way")

	wait, st = p.decide(now, 1, hint("Retry-After", "1"), &bo, now.Add(2*time.Second))
	require.Nil(t, st, "a deadline far enough away")
	assert.Equal(t, time.Second, wait)

	stopping := retryPolicy{maxRetries: 3, maxRetryAfter: time.Minute, newBackoff: func() backoff.BackOff { return &backoff.StopBackOff{} }}
	bo = nil
	_, st = stopping.decide(now, 1, nil, &bo, time.Time{})
	require.NotNil(t, st)
	assert.Equal(t, "backoff policy stopped", st.why)
}
