package main

import (
	"fmt"
	"io"
	"log"
	"math"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// gate is a reverse proxy in front of an llmtest server that refuses some
// requests itself, per its policy, with OpenAI-format errors. It counts
// every request it receives.
type gate struct {
	proxy    *httputil.ReverseProxy
	transp   *http.Transport
	policy   func(now time.Time) *refusal // nil: pass the request upstream
	requests atomic.Int64
	refused  atomic.Int64
}

// refusal is an error answer the gate gives instead of proxying.
type refusal struct {
	status int
	header http.Header
	kind   string
	msg    string
}

// newGate proxies to upstream, an llmtest Server.URL ("http://host:port/v1").
func newGate(upstream string, policy func(time.Time) *refusal) *gate {
	u, err := url.Parse(upstream)
	if err != nil {
		panic(err)
	}
	u.Path = "" // requests keep their /v1/... path
	g := &gate{policy: policy, transp: newTransport()}
	g.proxy = httputil.NewSingleHostReverseProxy(u)
	g.proxy.Transport = g.transp
	g.proxy.ErrorLog = log.New(io.Discard, "", 0)
	return g
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.requests.Add(1)
	if ref := g.policy(time.Now()); ref != nil {
		g.refused.Add(1)
		_, _ = io.Copy(io.Discard, r.Body)
		for k, vs := range ref.header {
			w.Header()[k] = vs
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(ref.status)
		fmt.Fprintf(w, `{"error":{"message":%q,"type":%q,"param":null,"code":null}}`, ref.msg, ref.kind)
		return
	}
	g.proxy.ServeHTTP(w, r)
}

// hintMode is which delay hint a rate-limited answer carries.
type hintMode int

const (
	hintSeconds hintMode = iota // Retry-After in whole seconds, rounded up
	hintMillis                  // retry-after-ms, plus Retry-After in seconds, as OpenAI sends
	hintNone                    // no hint: the client's own backoff decides
)

func (m hintMode) String() string {
	switch m {
	case hintSeconds:
		return "Retry-After (whole seconds)"
	case hintMillis:
		return "retry-after-ms + Retry-After"
	default:
		return "no hint"
	}
}

// tokenBucket admits rate requests per second with bursts of up to burst;
// over the limit it answers 429 with the time until the next token.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
	hint   hintMode
}

func newTokenBucket(rate, burst float64, hint hintMode, now time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: burst, tokens: burst, last: now, hint: hint}
}

// take spends a token if there is one; otherwise it returns how long until
// there will be.
func (b *tokenBucket) take(now time.Time) (wait time.Duration, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if now.After(b.last) {
		b.tokens = math.Min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second)), false
}

// policy is the gate policy of a rate-limited API.
func (b *tokenBucket) policy(now time.Time) *refusal {
	wait, ok := b.take(now)
	if ok {
		return nil
	}
	h := http.Header{}
	secs := int64(math.Ceil(wait.Seconds()))
	switch b.hint {
	case hintSeconds:
		h.Set("Retry-After", strconv.FormatInt(secs, 10))
	case hintMillis:
		h.Set("Retry-After", strconv.FormatInt(secs, 10))
		h.Set("Retry-After-Ms", strconv.FormatInt(int64(math.Ceil(float64(wait)/float64(time.Millisecond))), 10))
	}
	return &refusal{status: http.StatusTooManyRequests, header: h, kind: "requests",
		msg: "Rate limit reached for requests. Please try again later."}
}

// outage answers 503 until end, then lets everything through.
func outage(end time.Time) func(time.Time) *refusal {
	return func(now time.Time) *refusal {
		if now.Before(end) {
			return &refusal{status: http.StatusServiceUnavailable, kind: "server_error",
				msg: "The server is overloaded or not ready yet."}
		}
		return nil
	}
}

// v1 makes the base URL of an OpenAI-compatible API served at base.
func v1(base string) string { return strings.TrimSuffix(base, "/") + "/v1" }
