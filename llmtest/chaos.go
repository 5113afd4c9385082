package llmtest

import (
	"math/rand/v2"
	"net/http"
	"time"
)

// defaultChaosRetryAfter is the rate-limit hint when Chaos.RetryAfter is zero:
// short, so chaos tests that honour the hint stay fast.
const defaultChaosRetryAfter = 10 * time.Millisecond

// Chaos gives, for each chat completion request, the probability (0..1) of
// each random fault; the remaining probability is a normal success. The
// probabilities are checked in field order against a single uniform draw,
// so if they sum to more than 1 the later ones are squeezed out.
type Chaos struct {
	// RateLimit answers 429, choosing with equal odds a Retry-After hint, a
	// retry-after-ms hint or no hint at all.
	RateLimit float64
	// ServerError answers 500, 502, 503 or 504, chosen with equal odds.
	ServerError float64
	// Reset closes the connection with a TCP RST before any response.
	Reset float64
	// Hang never answers, until the client gives up or the server closes.
	Hang float64
	// Truncate cuts a stream after half of its content chunks, without
	// [DONE], and a plain response after half of its body.
	Truncate float64
	// RetryAfter is the hint sent with RateLimit faults; zero means 10ms.
	RetryAfter time.Duration
}

// enabled reports whether c can produce any fault, so that a server without
// chaos never consumes random numbers for it.
func (c Chaos) enabled() bool {
	return c.RateLimit > 0 || c.ServerError > 0 || c.Reset > 0 || c.Hang > 0 || c.Truncate > 0
}

// draw picks the fault for one request.
func (c Chaos) draw(r *rand.Rand) Fault {
	hint := c.RetryAfter
	if hint <= 0 {
		hint = defaultChaosRetryAfter
	}
	u := r.Float64()
	if u -= c.RateLimit; u < 0 {
		switch r.IntN(3) {
		case 0:
			return RateLimited(hint)
		case 1:
			return RateLimitedMS(hint)
		default:
			return Status(http.StatusTooManyRequests)
		}
	}
	if u -= c.ServerError; u < 0 {
		codes := [...]int{
			http.StatusInternalServerError,
			http.StatusBadGateway,
			http.StatusServiceUnavailable,
			http.StatusGatewayTimeout,
		}
		return Status(codes[r.IntN(len(codes))])
	}
	if u -= c.Reset; u < 0 {
		return Reset()
	}
	if u -= c.Hang; u < 0 {
		return Hang()
	}
	if u -= c.Truncate; u < 0 {
		return Fault{kind: kindTruncate, chunks: truncateHalf}
	}
	return OK()
}
