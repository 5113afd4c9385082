package llmtest

import (
	"strings"

	openai "github.com/sashabaranov/go-openai"
	"math"
	"net/http"
	"strconv"
	"time"
)

// RateLimit makes a Server meter chat completion requests the way
// providers meter a key: a bucket of requests and one of tokens, each
// holding at most its limit and refilling continuously at that many per
// Period, both starting full. A request is admitted only if both buckets
// hold enough (one request; its prompt plus its reply in tokens, a word
// being a token here), else it is answered 429 at once, without latency,
// and draws nothing. See WithRateLimit.
type RateLimit struct {
	// RequestsPerMinute and TokensPerMinute are the limits, per Period
	// despite their names (a benchmark shortens the period to keep runs
	// short); 0 means unlimited on that axis.
	RequestsPerMinute int
	TokensPerMinute   int
	// Period is the time the limits are per; 0 means a minute.
	Period time.Duration
	// Headers sends OpenAI's x-ratelimit-limit-, -remaining- and
	// -reset-requests and -tokens on every chat answer, 429s included.
	// Reset is the time until that bucket is full again, written like
	// OpenAI writes it: "1s", "6m0s", "20ms", "1m30.5s".
	Headers bool
	// Hints sends retry-after-ms (exact, rounded up to the millisecond)
	// and Retry-After (whole seconds, rounded up) with every 429: the time
	// until the request would be admitted, were nothing else drawn
	// meanwhile.
	Hints bool
}

// WithRateLimit meters chat completion requests; see RateLimit. Rejected
// requests count in Stats.Faults and Stats.RateLimited and are recorded
// in History as "rate limit" faults.
func WithRateLimit(rl RateLimit) Option {
	return func(c *config) { c.rateLimit = rl }
}

// limiter is the state of a Server's RateLimit; guarded by Server.mu.
type limiter struct {
	rl           RateLimit
	period       time.Duration
	requests     float64 // tokens left in each bucket
	tokens       float64
	last         time.Time // when they were last refilled
	enabled      bool
	rateR, rateT float64 // refill per second
}

func newLimiter(rl RateLimit) limiter {
	l := limiter{rl: rl, period: rl.Period}
	if l.period <= 0 {
		l.period = time.Minute
	}
	l.enabled = rl.RequestsPerMinute > 0 || rl.TokensPerMinute > 0
	l.requests, l.tokens = float64(rl.RequestsPerMinute), float64(rl.TokensPerMinute)
	l.rateR = float64(rl.RequestsPerMinute) / l.period.Seconds()
	l.rateT = float64(rl.TokensPerMinute) / l.period.Seconds()
	return l
}

func (l *limiter) refill(now time.Time) {
	if !l.last.IsZero() {
		dt := now.Sub(l.last).Seconds()
		l.requests = math.Min(float64(l.rl.RequestsPerMinute), l.requests+dt*l.rateR)
		l.tokens = math.Min(float64(l.rl.TokensPerMinute), l.tokens+dt*l.rateT)
	}
	l.last = now
}

// admit draws one request and cost tokens at now, or reports how long
// until it could.
func (l *limiter) admit(now time.Time, cost int) (wait time.Duration, ok bool) {
	l.refill(now)
	var w float64 // seconds
	if l.rl.RequestsPerMinute > 0 && l.requests < 1 {
		w = math.Max(w, (1-l.requests)/l.rateR)
	}
	if l.rl.TokensPerMinute > 0 {
		need := math.Min(float64(cost), float64(l.rl.TokensPerMinute)) // a request larger than the bucket waits for it full
		if l.tokens < need {
			w = math.Max(w, (need-l.tokens)/l.rateT)
		}
	}
	if w > 0 {
		return time.Duration(math.Ceil(w * float64(time.Second))), false
	}
	if l.rl.RequestsPerMinute > 0 {
		l.requests--
	}
	if l.rl.TokensPerMinute > 0 {
		l.tokens -= float64(cost)
	}
	return 0, true
}

// header writes the x-ratelimit-* headers of the buckets' state at now.
func (l *limiter) header(h http.Header) {
	axis := func(name string, limit int, left, rate float64) {
		if limit <= 0 {
			return
		}
		left = math.Max(left, 0)
		reset := time.Duration((float64(limit) - left) / rate * float64(time.Second)).Round(time.Millisecond)
		h.Set("X-Ratelimit-Limit-"+name, strconv.Itoa(limit))
		h.Set("X-Ratelimit-Remaining-"+name, strconv.Itoa(int(left)))
		h.Set("X-Ratelimit-Reset-"+name, reset.String())
	}
	axis("Requests", l.rl.RequestsPerMinute, l.requests, l.rateR)
	axis("Tokens", l.rl.TokensPerMinute, l.tokens, l.rateT)
}

// rateLimit meters a well-formed chat request costing cost tokens: it
// returns the 429 fault to answer with, or ok. Admitted requests get the
// headers too, set on w.
func (s *Server) rateLimit(w http.ResponseWriter, cost int) (Fault, bool) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	l := &s.limiter
	if !l.enabled {
		return Fault{}, true
	}
	wait, ok := l.admit(now, cost)
	if l.rl.Headers {
		l.header(w.Header())
	}
	if ok {
		return Fault{}, true
	}
	s.stats.RateLimited++
	f := Status(http.StatusTooManyRequests).WithCode("rate_limit_exceeded")
	if l.rl.Hints {
		f = f.WithHeader("retry-after-ms", strconv.FormatInt(ceilDiv(wait, time.Millisecond), 10)).
			WithHeader("Retry-After", strconv.FormatInt(ceilDiv(wait, time.Second), 10))
	}
	return f, false
}

// SetDown makes the server answer every chat completion request with
// status, at once, as an outage would, until SetDown(0). Such answers
// count in Stats.Faults.
func (s *Server) SetDown(status int) {
	if status != 0 {
		Status(status) // panics on an invalid status, as Status does
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = status
}

// Connections reports how many connections the server has accepted since
// it started: a client that reuses its connections opens few.
func (s *Server) Connections() int {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	return s.accepted
}

// gate answers a well-formed chat request for SetDown or WithRateLimit,
// before any latency and without consuming the script; the zero Fault lets
// it through.
func (s *Server) gate(w http.ResponseWriter, req openai.ChatCompletionRequest) Fault {
	s.mu.Lock()
	down, metered := s.down, s.limiter.enabled
	s.mu.Unlock()
	if down != 0 {
		return s.record(req, Status(down))
	}
	if !metered {
		return Fault{}
	}
	call := s.cost(req)
	if f, ok := s.rateLimit(w, call); !ok {
		return s.record(req, f)
	}
	return Fault{}
}

// record counts and records a fault the server chose by itself.
func (s *Server) record(req openai.ChatCompletionRequest, f Fault) Fault {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	f.immediate = true
	s.stats.Faults++
	if req.Stream {
		s.stats.Streams++
	}
	prompt := lastUserMessage(req)
	s.remember(prompt, f.exchange(now))
	return f
}

// cost is what a request draws from the token bucket: its prompt and the
// reply it will get, in words, the usage it will report.
func (s *Server) cost(req openai.ChatCompletionRequest) int {
	prompt := 0
	for _, m := range req.Messages {
		prompt += len(strings.Fields(messageText(m)))
	}
	reply := len(strings.Fields(Reply(lastUserMessage(req))))
	//lint:ignore SA1019 clients still send max_tokens, and the API honours it
	limit := req.MaxTokens
	if req.MaxCompletionTokens > 0 {
		limit = req.MaxCompletionTokens
	}
	if limit > 0 {
		reply = min(reply, limit)
	}
	return prompt + max(req.N, 1)*reply
}
