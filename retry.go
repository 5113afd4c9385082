package llmdrain

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Retry defaults, close to the official openai-go client's.
const (
	// DefaultMaxRetries is the number of retries after the first attempt
	// when Config.MaxRetries is 0.
	DefaultMaxRetries = 3
	// DefaultMaxRetryAfter is the largest server-requested delay
	// (retry-after-ms or Retry-After) that is honoured when
	// Config.MaxRetryAfter is 0. A server asking for more is taken to mean
	// "not any time soon": the error is returned at once.
	DefaultMaxRetryAfter = 60 * time.Second
	// DefaultFailoverAfter is how many consecutive failed attempts against
	// one endpoint switch later attempts to the next fallback endpoint.
	DefaultFailoverAfter = 3
)

// DefaultBackoff returns the delay policy used between attempts:
// exponential, starting at 0.5 s and doubling up to an
// interval of 8 s, each delay randomised by ±25 % so that clients that failed
// together do not retry together. A server's retry-after-ms or Retry-After
// is a floor under it: the wait is the longer of the two. It never stops by
// itself; the attempt count and the caller's deadline bound the retries.
//
// Any backoff.BackOff can be used instead through Config.Backoff; tests use
// &backoff.ZeroBackOff{} to retry without waiting.
func DefaultBackoff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 500 * time.Millisecond
	b.Multiplier = 2
	b.MaxInterval = 8 * time.Second
	b.RandomizationFactor = 0.25
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

// DefaultShouldRetry is the retry decision used when Config.ShouldRetry is
// nil. It is only consulted while the caller's context is still live: a
// cancelled or expired caller context is never retried. It reports whether
// an attempt that ended with resp or err should be tried again:
//
//   - err != nil: retried (connection refused or reset, EOF before a
//     response, an attempt that hit Config.AttemptTimeout), except TLS
//     certificate and handshake errors, which no retry can fix.
//   - a status below 400 (a 2xx answer, whatever its headers say, or a
//     redirect): not retried. An answer received is not thrown away.
//   - x-should-retry: true or false in an error response (status 400 and
//     above) overrides its status, as the official Python and Node SDKs
//     read it. (openai-go also reads it on a 2xx; we do not.)
//   - 408 Request Timeout, 409 Conflict, 429 Too Many Requests and every 5xx
//     except 501 Not Implemented: retried.
//   - anything else, notably 400, 401, 403, 404 and 422: not retried.
//
// A 2xx stream cut or stalled before its first byte, or a 2xx JSON answer
// before its end, comes here as an error, not as a response: see
// Config.AttemptTimeout.
func DefaultShouldRetry(resp *http.Response, err error) bool {
	if err != nil {
		return !isTLSError(err)
	}
	if resp.StatusCode < 400 {
		return false
	}
	switch strings.ToLower(resp.Header.Get("X-Should-Retry")) {
	case "true":
		return true
	case "false":
		return false
	}
	switch c := resp.StatusCode; {
	case c == http.StatusRequestTimeout, c == http.StatusConflict, c == http.StatusTooManyRequests:
		return true
	case c >= 500 && c != http.StatusNotImplemented:
		return true
	}
	return false
}

func isTLSError(err error) bool {
	var (
		verr *tls.CertificateVerificationError
		uerr x509.UnknownAuthorityError
		herr x509.HostnameError
		cerr x509.CertificateInvalidError
		rerr tls.RecordHeaderError
	)
	return errors.As(err, &verr) || errors.As(err, &uerr) || errors.As(err, &herr) ||
		errors.As(err, &cerr) || errors.As(err, &rerr)
}

// retryAfter returns the delay a server asked for, if it gave a usable one:
// retry-after-ms (milliseconds, the OpenAI extension) first, then
// Retry-After in seconds or as an HTTP date. Malformed, negative or
// non-finite values are ignored, so the backoff policy decides; absurdly
// large values saturate rather than overflow, so the cap rejects them.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	if v := strings.TrimSpace(h.Get("Retry-After-Ms")); v != "" {
		if ms, err := strconv.ParseFloat(v, 64); err == nil && ms >= 0 && !math.IsInf(ms, 0) {
			return saturate(ms * float64(time.Millisecond)), true
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if s < 0 || math.IsInf(s, 0) || math.IsNaN(s) {
			return 0, false
		}
		return saturate(s * float64(time.Second)), true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

func saturate(ns float64) time.Duration {
	if ns >= math.MaxInt64 || math.IsNaN(ns) {
		return math.MaxInt64
	}
	return time.Duration(ns)
}

// RetryError is the error of a call whose last attempt failed without a
// response (connection refused or reset, an attempt timeout, a 2xx stream
// that ended before its first byte, a 2xx JSON body cut or stalled before
// its end, ...) and that will not be tried again: the retries ran out, the backoff policy stopped,
// or the next wait would have passed a deadline. It wraps the last
// attempt's error, so errors.Is(err, syscall.ECONNREFUSED) still works.
// A call whose last attempt got a response ends with go-openai's error for
// it instead, such as *openai.APIError.
type RetryError struct {
	Attempts int    // attempts made, the first one included
	Reason   string // why no further attempt, such as "gave up"
	Err      error  // the last attempt's error

	budget bool // the retry budget refused the next attempt
}

// Is reports whether target is ErrRetryBudget and the retry budget
// (Config.RetryBudget) ended the call.
func (e *RetryError) Is(target error) bool { return e.budget && target == ErrRetryBudget }

// Error says why the call stopped, after how many attempts, and the last
// error, such as "llmdrain: gave up after 4 attempts: dial tcp ...".
func (e *RetryError) Error() string {
	s := "s"
	if e.Attempts == 1 {
		s = ""
	}
	return fmt.Sprintf("llmdrain: %s after %d attempt%s: %v", e.Reason, e.Attempts, s, e.Err)
}

// Unwrap returns Err.
func (e *RetryError) Unwrap() error { return e.Err }

// Timeout reports whether the last attempt timed out (Config.AttemptTimeout
// or FirstTokenTimeout), so that the *url.Error go-openai's HTTP client
// wraps it in reports Timeout() true too, as for net/http's own timeouts.
func (e *RetryError) Timeout() bool {
	var t interface{ Timeout() bool }
	return errors.As(e.Err, &t) && t.Timeout()
}

// retryPolicy is the part of a Config that decides whether, and after how
// long, a failed attempt is tried again.
type retryPolicy struct {
	maxRetries    int           // retries after the first attempt
	maxRetryAfter time.Duration // the largest server hint honoured
	newBackoff    func() backoff.BackOff
}

// stop says why a call makes no further attempt.
type stop struct {
	why string // "gave up", "a retry in 1s would pass the deadline", ...
	// deadline is set when only a deadline (the caller's or the drain's)
	// stood in the way: the failure itself was worth retrying.
	deadline bool
}

// decide returns how long to wait before the next attempt of a call whose
// attempt number attempt (from 1) failed in a way worth retrying, with
// resp (nil when it got no response); or, when it must not be tried
// again, why. bo is the call's backoff, made on first use and advanced by
// one step on each call that gets that far. dl is the earlier of the
// caller's and the drain's deadline, zero when neither has one. It reads
// no clock but now.
//
// A server's hint is a floor under the backoff, not a replacement: never
// sooner than asked, and never sooner than the jittered backoff, so that
// the many clients a rate limiter told "20 ms" do not all come back
// together.
func (p retryPolicy) decide(now time.Time, attempt int, resp *http.Response, bo *backoff.BackOff, dl time.Time) (time.Duration, *stop) {
	var (
		wait   time.Duration
		hinted bool
	)
	if resp != nil {
		wait, hinted = retryAfter(resp.Header, now)
	}
	switch {
	case attempt > p.maxRetries:
		return 0, &stop{why: "gave up"}
	case hinted && wait > p.maxRetryAfter:
		return 0, &stop{why: fmt.Sprintf("server asked to retry after %v, above the %v cap", wait, p.maxRetryAfter)}
	}
	if *bo == nil {
		*bo = p.newBackoff()
	}
	switch d := (*bo).NextBackOff(); {
	case d == backoff.Stop:
		return 0, &stop{why: "backoff policy stopped"}
	case d > wait:
		wait = d
	}
	if !dl.IsZero() && now.Add(wait).After(dl) {
		return 0, &stop{why: fmt.Sprintf("a retry in %v would pass the deadline", wait.Round(time.Millisecond)), deadline: true}
	}
	return wait, nil
}
