package llmdrain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	"github.com/llmdrain/llmdrain/internal/pacing"
	"github.com/llmdrain/llmdrain/llmtest"
)

// run makes n chat calls through c, at most conc at once, and returns
// their errors.
func run(t *testing.T, c *Client, n, conc int) []error {
	t.Helper()
	errs := make([]error, n)
	var g errgroup.Group
	g.SetLimit(conc)
	for i := range n {
		g.Go(func() error {
			_, errs[i] = c.CreateChatCompletion(context.Background(), userMsg(fmt.Sprintf("call %d", i)))
			return nil
		})
	}
	_ = g.Wait()
	return errs
}

func TestPacingKeepsUnderRequestQuota(t *testing.T) {
	// 5 requests per 250 ms, headers but no hints: after the first answer
	// tells the quota, 20 calls at once must wait their turn, not bounce.
	srv := newServer(t, llmtest.WithRateLimit(llmtest.RateLimit{RequestsPerMinute: 5, Period: 250 * time.Millisecond, Headers: true}))
	c := newTestClient(t, srv, Config{})
	_, err := c.CreateChatCompletion(context.Background(), userMsg("first"))
	require.NoError(t, err)
	start := time.Now()
	for i, err := range run(t, c, 20, 20) {
		require.NoError(t, err, "call %d", i)
	}
	// Unpaced, 16 of the 20 would bounce at least once. One or two may
	// still: an attempt held up between its draw and its send (a busy
	// machine, the race detector) can reach the server after later ones.
	assert.LessOrEqual(t, srv.Stats().RateLimited, 2, "429s with the quota known")
	// 4 left in the bucket, 16 more at 20/s.
	assert.GreaterOrEqual(t, time.Since(start), 700*time.Millisecond, "the quota was overdrawn")
}

func TestPacingKeepsUnderTokenQuota(t *testing.T) {
	cost := 2 + len(llmtestWords("call 0")) // prompt words + reply words
	srv := newServer(t, llmtest.WithRateLimit(llmtest.RateLimit{TokensPerMinute: 5 * cost, Period: 250 * time.Millisecond, Headers: true}))
	c := newTestClient(t, srv, Config{})
	_, err := c.CreateChatCompletion(context.Background(), userMsg("call 0"))
	require.NoError(t, err)
	for i, err := range run(t, c, 20, 20) {
		require.NoError(t, err, "call %d", i)
	}
	// The estimate starts high and is corrected by the usage: a few
	// 429s at most while it learns, never one per call.
	assert.LessOrEqual(t, srv.Stats().RateLimited, 3)
	// And corrected it is: a call like these is now estimated at about
	// what the server billed, not at the prompt's bytes / 4 plus a
	// paragraph (256 tokens) it started from.
	body, err := json.Marshal(userMsg("call 0"))
	require.NoError(t, err)
	pacer := c.http.Transport.(*transport).router.targets[0].gate.pacer
	est := pacer.Estimate(len(body), 0)
	assert.InDelta(t, cost, est, float64(cost), "estimate %d tokens for a call billed %d", est, cost)
}

func llmtestWords(prompt string) []string {
	var words []string
	start := -1
	s := llmtest.Reply(prompt)
	for i, r := range s + " " {
		if r == ' ' || r == '\n' || r == '\t' {
			if start >= 0 {
				words = append(words, s[start:i])
				start = -1
			}
		} else if start < 0 {
			start = i
		}
	}
	return words
}

func TestQuotaSharedBetweenClients(t *testing.T) {
	// Two clients drawing from one LocalQuota stay under the quota
	// together: each one's own mirror of the headers counts only its own
	// calls.
	srv := newServer(t, llmtest.WithRateLimit(llmtest.RateLimit{RequestsPerMinute: 10, Period: 500 * time.Millisecond, Headers: true}))
	q := new(LocalQuota)
	a := newTestClient(t, srv, Config{Quota: q})
	b := newTestClient(t, srv, Config{Quota: q})
	for _, c := range []*Client{a, b} {
		_, err := c.CreateChatCompletion(context.Background(), userMsg("first"))
		require.NoError(t, err)
	}
	var wg sync.WaitGroup
	for _, c := range []*Client{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, err := range run(t, c, 10, 10) {
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	assert.LessOrEqual(t, srv.Stats().RateLimited, 2)
}

type failingQuota struct{ calls atomic.Int32 }

func (q *failingQuota) Take(context.Context, string, Limit, int, int) (time.Duration, error) {
	q.calls.Add(1)
	return 0, errors.New("quota down")
}

func TestDeadQuotaPacesLocally(t *testing.T) {
	srv := newServer(t, llmtest.WithRateLimit(llmtest.RateLimit{RequestsPerMinute: 5, Period: 250 * time.Millisecond, Headers: true}))
	q := new(failingQuota)
	var logs syncBuffer
	c := newTestClient(t, srv, Config{Quota: q, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	_, err := c.CreateChatCompletion(context.Background(), userMsg("first"))
	require.NoError(t, err)
	for _, err := range run(t, c, 10, 10) {
		require.NoError(t, err)
	}
	assert.Positive(t, q.calls.Load())
	assert.LessOrEqual(t, srv.Stats().RateLimited, 2, "not paced locally")
	assert.Equal(t, 1, strings.Count(logs.String(), "quota unreachable"), "logged once")
}

func TestAdaptiveLimitHalvesOnOverload(t *testing.T) {
	adaptive := overloadPeak(t, Config{MaxConcurrent: 8})
	assert.LessOrEqual(t, adaptive, int32(4), "the limit did not halve after a wave of 429s")
	off := overloadPeak(t, Config{MaxConcurrent: 8, AdaptiveCeiling: -1})
	assert.Greater(t, off, int32(4), "without the adaptive limit the retries all go at once")
}

// overloadPeak makes 8 calls at once through a client of cfg against a
// server that answers each call's first attempt 429 at once, and the rest
// after a while; it returns how many of those ran at once at the most.
func overloadPeak(t *testing.T, cfg Config) int32 {
	var (
		n, cur, peak atomic.Int32
		seen         sync.Map
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		body, _ := io.ReadAll(r.Body)
		if _, again := seen.LoadOrStore(string(body), true); !again {
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		now := cur.Add(1)
		for p := peak.Load(); now > p && !peak.CompareAndSwap(p, now); p = peak.Load() {
		}
		time.Sleep(50 * time.Millisecond) // to overlap; the bound is what is asserted
		cur.Add(-1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}]}`)
	}))
	t.Cleanup(srv.Close)
	c := scriptedClient(t, srv, cfg)
	started := make(chan struct{})
	var wg, ready sync.WaitGroup
	ready.Add(8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			<-started
			_, err := c.CreateChatCompletion(context.Background(), userMsg(strconv.Itoa(i)))
			assert.NoError(t, err)
		}()
	}
	ready.Wait()
	close(started)
	wg.Wait()
	assert.Equal(t, int32(16), n.Load())
	return peak.Load()
}

func TestRetryBudgetCutsRetries(t *testing.T) {
	srv := newServer(t)
	srv.SetDown(http.StatusServiceUnavailable)
	// No floor: retries are 20 % of the calls.
	c := newTestClient(t, srv, Config{MinRetriesPerSecond: -1, AdaptiveCeiling: -1})
	cut := 0
	for i := range 10 {
		_, err := c.CreateChatCompletion(context.Background(), userMsg(strconv.Itoa(i)))
		var apiErr *openai.APIError
		require.ErrorAs(t, err, &apiErr, "call %d", i)
		assert.Equal(t, http.StatusServiceUnavailable, apiErr.HTTPStatusCode)
		if errors.Is(err, ErrRetryBudget) {
			cut++
			var re *RetryError
			require.ErrorAs(t, err, &re)
			assert.Contains(t, err.Error(), "retry budget spent")
			assert.NotContains(t, err.Error(), fakeKey)
		}
	}
	assert.Equal(t, 10, cut, "every call cut by the budget at some point")
	// 10 calls earn 2 retries.
	assert.Equal(t, 12, srv.Stats().Requests)

	off := newServer(t)
	off.SetDown(http.StatusServiceUnavailable)
	c = newTestClient(t, off, Config{RetryBudget: -1, MinRetriesPerSecond: -1, AdaptiveCeiling: -1})
	for i := range 10 {
		_, err := c.CreateChatCompletion(context.Background(), userMsg(strconv.Itoa(i)))
		require.Error(t, err)
		assert.NotErrorIs(t, err, ErrRetryBudget)
	}
	assert.Equal(t, 10*(1+DefaultMaxRetries), off.Stats().Requests, "without a budget every retry is made")
}

func TestRetryBudgetFloor(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(http.StatusServiceUnavailable), llmtest.Status(http.StatusServiceUnavailable))
	// The floor lets a lone call retry.
	c := newTestClient(t, srv, Config{})
	_, err := c.CreateChatCompletion(context.Background(), userMsg("lone"))
	require.NoError(t, err)
	assert.Equal(t, 3, srv.Stats().Requests)
}

func TestDefaultTransportReusesConnections(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(5*time.Millisecond))
	c := newTestClient(t, srv, Config{MaxConcurrent: 32})
	for range 10 {
		for _, err := range run(t, c, 32, 32) {
			require.NoError(t, err)
		}
	}
	// Go's default (2 idle per host) would open about 30 per round.
	assert.LessOrEqual(t, srv.Connections(), 40, "connections opened for 320 calls at 32 at once")
}

func TestRetryBudgetConfig(t *testing.T) {
	for _, cfg := range []Config{
		{RetryBudget: 11}, {MinRetriesPerSecond: 100}, {RetryBudget: nanValue()},
	} {
		cfg.APIKey = fakeKey
		_, err := New(cfg)
		require.ErrorIs(t, err, ErrInvalidConfig, "%v", cfg)
	}
	r, err := resolve(Config{APIKey: fakeKey})
	require.NoError(t, err)
	assert.Equal(t, DefaultRetryBudget, r.RetryBudget)
	assert.Equal(t, float64(DefaultMinRetriesPerSecond), r.MinRetriesPerSecond)
	assert.Equal(t, DefaultAdaptiveCeiling, r.AdaptiveCeiling)
	r, err = resolve(Config{APIKey: fakeKey, MaxConcurrent: 8, AdaptiveCeiling: 100})
	require.NoError(t, err)
	assert.Equal(t, 8, r.AdaptiveCeiling, "bounded by MaxConcurrent")
	s := fmt.Sprint(Config{APIKey: fakeKey, Quota: new(LocalQuota), RetryBudget: 0.5})
	assert.Contains(t, s, "RetryBudget: 0.5")
	assert.Contains(t, s, "Quota: *llmdrain.LocalQuota")
	assert.NotContains(t, s, fakeKey)
}

func nanValue() float64 {
	zero := 0.0
	return zero / zero
}

func TestHooksToldOfPacingAndBudget(t *testing.T) {
	srv := newServer(t, llmtest.WithRateLimit(llmtest.RateLimit{RequestsPerMinute: 2, Period: 200 * time.Millisecond, Headers: true}))
	var (
		mu      sync.Mutex
		waits   = map[WaitReason]int{}
		reasons []string
		types   []string
	)
	hooks := &Hooks{
		Waited: func(w WaitInfo) {
			mu.Lock()
			defer mu.Unlock()
			waits[w.Reason]++
			assert.Equal(t, srv.URL, w.Target)
			assert.Positive(t, w.Duration)
		},
		AttemptDone: func(a AttemptInfo) {
			mu.Lock()
			defer mu.Unlock()
			reasons = append(reasons, a.Reason)
		},
		CallDone: func(d CallDoneInfo) {
			mu.Lock()
			defer mu.Unlock()
			types = append(types, d.ErrorType)
		},
	}
	c := newTestClient(t, srv, Config{Hooks: hooks, MinRetriesPerSecond: -1})
	_, err := c.CreateChatCompletion(context.Background(), userMsg("first")) // tells the quota
	require.NoError(t, err)
	for _, err := range run(t, c, 6, 6) {
		require.NoError(t, err)
	}
	mu.Lock()
	assert.Positive(t, waits[WaitPacing], "no pacing wait told")
	mu.Unlock()

	srv.SetDown(http.StatusServiceUnavailable)
	_, err = c.CreateChatCompletion(context.Background(), userMsg("down"))
	require.ErrorIs(t, err, ErrRetryBudget)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, "budget", reasons[len(reasons)-1])
	assert.Equal(t, "retry_budget", types[len(types)-1])
}

// The estimate takes a request's bound on its completion from the field
// itself, not from text that names it (escaped, in a tool's description
// after the field), and max_tokens when max_completion_tokens is absent.
func TestEstimateReadsTheRequestsBound(t *testing.T) {
	for _, c := range []struct {
		body string
		max  int
	}{
		{`{"model":"m","messages":[],"max_completion_tokens":40,"tools":[{"function":{"description":"set \"max_completion_tokens\": 9"}}]}`, 40},
		{`{"model":"m","messages":[{"role":"user","content":"say \"max_tokens\":7"}],"max_tokens":30}`, 30},
		{`{"model":"m","messages":[{"role":"user","content":"say \"max_tokens\":7"}]}`, 0},
	} {
		p := pacing.New(nil)
		got := (&call{raw: []byte(c.body)}).estimate(p)
		assert.Equal(t, p.Estimate(len(c.body), c.max), got, c.body)
	}
}
