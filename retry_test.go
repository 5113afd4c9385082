package llmdrain

import (
	"crypto/x509"
	"fmt"
	"io"
	"math"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
)

func TestDefaultShouldRetryStatuses(t *testing.T) {
	for code := 100; code < 600; code++ {
		want := code == 408 || code == 409 || code == 429 || (code >= 500 && code != 501)
		resp := &http.Response{StatusCode: code, Header: http.Header{}}
		assert.Equal(t, want, DefaultShouldRetry(resp, nil), "status %d", code)
	}
	for _, code := range []int{400, 401, 403, 404, 422, 501} {
		assert.False(t, DefaultShouldRetry(&http.Response{StatusCode: code, Header: http.Header{}}, nil), "status %d", code)
	}
}

func TestDefaultShouldRetryHeaderOverrides(t *testing.T) {
	resp := func(code int, v string) *http.Response {
		h := http.Header{}
		h.Set("x-should-retry", v)
		return &http.Response{StatusCode: code, Header: h}
	}
	assert.True(t, DefaultShouldRetry(resp(400, "true"), nil))
	assert.False(t, DefaultShouldRetry(resp(503, "false"), nil))
	assert.True(t, DefaultShouldRetry(resp(503, "maybe"), nil), "an unknown value leaves the status to decide")
}

// TestDefaultShouldRetryKeepsAnswers: x-should-retry is read on error
// statuses only, as the Python and Node SDKs do; an answer is never
// thrown away.
func TestDefaultShouldRetryKeepsAnswers(t *testing.T) {
	for _, code := range []int{100, 200, 201, 202, 204, 206, 299, 301, 302, 304, 307, 308} {
		h := http.Header{}
		h.Set("x-should-retry", "true")
		assert.False(t, DefaultShouldRetry(&http.Response{StatusCode: code, Header: h}, nil), "status %d", code)
	}
}

func TestDefaultShouldRetryErrors(t *testing.T) {
	assert.True(t, DefaultShouldRetry(nil, syscall.ECONNREFUSED))
	assert.True(t, DefaultShouldRetry(nil, fmt.Errorf("read: %w", syscall.ECONNRESET)))
	assert.True(t, DefaultShouldRetry(nil, io.EOF))
	assert.True(t, DefaultShouldRetry(nil, errAttemptTimeout))
	assert.False(t, DefaultShouldRetry(nil, fmt.Errorf("tls: %w", x509.UnknownAuthorityError{})))
	assert.False(t, DefaultShouldRetry(nil, x509.HostnameError{Host: "example.com", Certificate: &x509.Certificate{}}))
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		ms, ra string
		want   time.Duration
		ok     bool
	}{
		{"", "", 0, false},
		{"250", "", 250 * time.Millisecond, true},
		{"1.5", "", 1500 * time.Microsecond, true},
		{"250", "10", 250 * time.Millisecond, true}, // ms wins
		{"", "2", 2 * time.Second, true},
		{"", "0", 0, true},
		{"", "0.5", 500 * time.Millisecond, true},
		{"", now.Add(3 * time.Second).Format(http.TimeFormat), 3 * time.Second, true},
		{"", now.Add(-time.Hour).Format(http.TimeFormat), 0, true}, // a past date: retry now
		{"-5", "", 0, false},
		{"-5", "3", 3 * time.Second, true}, // a bad ms falls back to Retry-After
		{"", "-1", 0, false},
		{"abc", "soon", 0, false},
		{"NaN", "NaN", 0, false},
		{"", "Inf", 0, false},
		{"", "1e300", math.MaxInt64, true}, // saturates, so the cap rejects it
		{"1e300", "", math.MaxInt64, true},
	}
	for _, c := range cases {
		h := http.Header{}
		if c.ms != "" {
			h.Set("retry-after-ms", c.ms)
		}
		if c.ra != "" {
			h.Set("Retry-After", c.ra)
		}
		got, ok := retryAfter(h, now)
		assert.Equal(t, c.ok, ok, "ms=%q ra=%q", c.ms, c.ra)
		assert.Equal(t, c.want, got, "ms=%q ra=%q", c.ms, c.ra)
	}
}

func TestDefaultBackoff(t *testing.T) {
	b := DefaultBackoff()
	base := 500 * time.Millisecond
	for i := range 8 {
		want := base << i
		if want > 8*time.Second {
			want = 8 * time.Second
		}
		got := b.NextBackOff()
		assert.NotEqual(t, backoff.Stop, got)
		assert.GreaterOrEqual(t, got, time.Duration(float64(want)*0.75)-time.Millisecond, "retry %d", i+1)
		assert.LessOrEqual(t, got, time.Duration(float64(want)*1.25)+time.Millisecond, "retry %d", i+1)
	}
}

func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"", "0", "1", "1.5", "-1", "NaN", "Inf", "1e300", "Wed, 21 Oct 2015 07:28:00 GMT", "abc", " 7 "} {
		f.Add(s, s)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, ms, ra string) {
		h := http.Header{}
		h.Set("retry-after-ms", ms)
		h.Set("Retry-After", ra)
		d, ok := retryAfter(h, now)
		if d < 0 {
			t.Fatalf("negative wait %v (ok=%v) for ms=%q ra=%q", d, ok, ms, ra)
		}
		if !ok && d != 0 {
			t.Fatalf("no hint but wait %v", d)
		}
	})
}
