package llmdrain

import (
	"context"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/internal/breaker"
	"github.com/llmdrain/llmdrain/llmtest"
)

// fallbackKey is the fallback target's own key; leakMarker is in it too.
const fallbackKey = "sk-llmdrain-FAKE-fallback-0b9e41"

// manualClock is a clock the test moves.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func newManualClock() *manualClock {
	return &manualClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *manualClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// withClock gives c's targets breakers reading now, as New made them.
func withClock(t *testing.T, c *Client, cfg Config, now func() time.Time) {
	t.Helper()
	r, err := resolve(cfg)
	require.NoError(t, err)
	for _, tg := range c.http.Transport.(*transport).router.targets {
		require.NotNil(t, tg.breaker)
		tg.breaker = breaker.New(breaker.Policy{Threshold: r.FailoverAfter, Base: r.Cooldown, Max: r.MaxCooldown, Now: now})
	}
}

func breakerState(c *Client, i int) breaker.State {
	return c.http.Transport.(*transport).router.targets[i].breaker.State()
}

// twoTargets starts a primary server taking fakeKey and a fallback one
// taking fallbackKey, and a client whose fallback has its own key and
// model.
func twoTargets(t *testing.T, cfg Config) (primary, fallback *llmtest.Server, c *Client, full Config) {
	t.Helper()
	primary = newServer(t) // fakeKey
	fallback = llmtest.NewServer(llmtest.WithAPIKey(fallbackKey), llmtest.WithModels())
	t.Cleanup(fallback.Close)
	cfg.Model = "primary-model"
	cfg.Fallbacks = append([]Target{{BaseURL: fallback.URL, APIKey: fallbackKey, Model: "fallback-model"}}, cfg.Fallbacks...)
	c = newTestClient(t, primary, cfg)
	cfg.APIKey, cfg.BaseURL = fakeKey, primary.URL
	return primary, fallback, c, cfg
}

func chat(t *testing.T, c *Client, prompt string) openai.ChatCompletionResponse {
	t.Helper()
	resp, err := c.CreateChatCompletion(context.Background(), userMsg(prompt))
	require.NoError(t, err)
	require.Len(t, resp.Choices, 1)
	assert.Equal(t, llmtest.Reply(prompt), resp.Choices[0].Message.Content)
	return resp
}

// TestFallbackOwnKeyAndModel: a call that fails over goes with the
// fallback's key and model; neither server ever sees the other's key (each
// answers a wrong one 401, which it counts as a fault).
func TestFallbackOwnKeyAndModel(t *testing.T) {
	primary, fallback, c, _ := twoTargets(t, Config{})
	primary.Script(repeat(llmtest.Status(503), 3)...)

	resp := chat(t, c, "fail over")
	assert.Equal(t, "fallback-model", resp.Model, "the response names the model that answered")
	assert.Equal(t, 3, primary.Stats().Requests)
	assert.Equal(t, 3, primary.Stats().Faults, "only the scripted 503s: never a 401")
	assert.Equal(t, 1, fallback.Stats().Requests)
	assert.Zero(t, fallback.Stats().Faults, "no 401: the fallback got its own key")

	// The primary is out: the next calls, a stream included, go to the
	// fallback at once, with its key and model.
	resp = chat(t, c, "again")
	assert.Equal(t, "fallback-model", resp.Model)
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("a stream"))
	require.NoError(t, err)
	chunk, err := s.Recv()
	require.NoError(t, err)
	assert.Equal(t, "fallback-model", chunk.Model)
	_, err = readStream(s)
	require.NoError(t, err)
	require.NoError(t, s.Close())

	// Other endpoints keep their model: only completions are rewritten.
	emb, err := c.OpenAI().CreateEmbeddings(context.Background(), openai.EmbeddingRequest{Input: "x", Model: openai.SmallEmbedding3})
	require.NoError(t, err)
	assert.Equal(t, openai.SmallEmbedding3, emb.Model)

	assert.Equal(t, 3, primary.Stats().Requests)
	assert.Equal(t, 3, settled(t, fallback).Stats().Succeeded)
	assert.Zero(t, fallback.Stats().Faults)
}

// TestPrimaryKeepsRequestModel: the primary gets the request's model as
// it is, and a fallback without a model of its own too.
func TestPrimaryKeepsRequestModel(t *testing.T) {
	primary := newServer(t)
	fallback := newServer(t)
	primary.Script(llmtest.Status(503))
	c := newTestClient(t, primary, Config{Model: "configured", FailoverAfter: 1, Fallbacks: []Target{{BaseURL: fallback.URL}}})
	req := userMsg("named")
	req.Model = "named-model"
	resp, err := c.CreateChatCompletion(context.Background(), req)
	require.NoError(t, err)
	assert.Equal(t, "named-model", resp.Model)
	assert.Equal(t, 1, fallback.Stats().Requests, "the fallback inherited the primary's key")
	assert.Zero(t, fallback.Stats().Faults)
}

// TestTargetsAtOneOriginSendTheirOwnKeys: two targets at the same URL with
// different keys each send their own. The server takes only the second
// key; ShouldRetry retries its 401 so the call fails over.
func TestTargetsAtOneOriginSendTheirOwnKeys(t *testing.T) {
	srv := llmtest.NewServer(llmtest.WithAPIKey(fallbackKey), llmtest.WithModels())
	t.Cleanup(srv.Close)
	c := newTestClient(t, srv, Config{FailoverAfter: 1, Fallbacks: []Target{{APIKey: fallbackKey}},
		ShouldRetry: func(resp *http.Response, err error) bool {
			return err != nil || resp.StatusCode == http.StatusUnauthorized
		}})
	chat(t, c, "my own key")
	assert.Equal(t, 2, srv.Stats().Requests)
	assert.Equal(t, 1, srv.Stats().Faults, "the primary's key refused once, then the fallback's taken")
}

// TestBreakerFailsBackToPrimary: the primary out after FailoverAfter
// failures stays out for its cool-down (calls go straight to the
// fallback), then one probe is let through; a failed probe puts it out
// for longer, a successful one brings the traffic back.
func TestBreakerFailsBackToPrimary(t *testing.T) {
	primary, fallback, c, cfg := twoTargets(t, Config{})
	clk := newManualClock()
	withClock(t, c, cfg, clk.now)
	primary.Script(repeat(llmtest.Status(503), 4)...) // three to eject, one for the first probe

	assert.Equal(t, "fallback-model", chat(t, c, "eject").Model)
	assert.Equal(t, breaker.Open, breakerState(c, 0))
	for range 3 {
		assert.Equal(t, "fallback-model", chat(t, c, "while out").Model)
	}
	assert.Equal(t, 3, primary.Stats().Requests, "no attempt at the primary while it is out")

	clk.advance(DefaultCooldown) // half-open: a probe, which fails
	assert.Equal(t, "fallback-model", chat(t, c, "probe fails").Model)
	assert.Equal(t, 4, primary.Stats().Requests, "one probe")
	assert.Equal(t, breaker.Open, breakerState(c, 0))

	clk.advance(DefaultCooldown) // the second ejection lasts twice as long
	assert.Equal(t, "fallback-model", chat(t, c, "still out").Model)
	assert.Equal(t, 4, primary.Stats().Requests)

	clk.advance(DefaultCooldown) // a probe, which succeeds: failback
	assert.Equal(t, "primary-model", chat(t, c, "probe succeeds").Model)
	assert.Equal(t, breaker.Closed, breakerState(c, 0))
	assert.Equal(t, "primary-model", chat(t, c, "back").Model)
	assert.Equal(t, 6, primary.Stats().Requests)
	assert.Equal(t, 6, fallback.Stats().Requests)
}

// TestBreakerFailbackRealClock is TestBreakerFailsBackToPrimary's failback
// on the real clock, with a short cool-down: the primary closed and
// restarted on its port.
func TestBreakerFailbackRealClock(t *testing.T) {
	primary := llmtest.NewServer(llmtest.WithAPIKey(fakeKey), llmtest.WithModels())
	addr := primary.URL[len("http://") : len(primary.URL)-len("/v1")]
	fallback := newServer(t)
	c := newTestClient(t, primary, Config{Cooldown: 50 * time.Millisecond, MaxCooldown: 200 * time.Millisecond,
		Fallbacks: []Target{{BaseURL: fallback.URL, Model: "fallback-model"}}})
	primary.Close() // connection refused

	chat(t, c, "down")
	assert.Equal(t, 1, fallback.Stats().Requests)
	assert.Equal(t, breaker.Open, breakerState(c, 0))

	primary = llmtest.NewServer(llmtest.WithAPIKey(fakeKey), llmtest.WithModels(), llmtest.WithAddr(addr))
	t.Cleanup(primary.Close)
	back := time.Now()
	for chat(t, c, "until back").Model == "fallback-model" {
		require.Less(t, time.Since(back), 5*time.Second, "no failback")
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("failback %v after the primary's restart", time.Since(back).Round(time.Millisecond))
	assert.Less(t, time.Since(back), time.Second, "within the 200ms cap, generously")
	assert.Equal(t, breaker.Closed, breakerState(c, 0))
}

// TestCancelledProbeFreesItsPlace: while the probe is out other calls go
// to the fallback; a probe its caller cancels records nothing, and the
// next call probes again.
func TestCancelledProbeFreesItsPlace(t *testing.T) {
	primary, fallback, c, cfg := twoTargets(t, Config{})
	clk := newManualClock()
	withClock(t, c, cfg, clk.now)
	primary.Script(repeat(llmtest.Status(503), 3)...)
	chat(t, c, "eject")
	clk.advance(DefaultCooldown)

	primary.Script(llmtest.Hang())
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { _, err := c.Chat(ctx, "the probe"); errc <- err }()
	waitInFlight(t, primary, 1)
	assert.Equal(t, "fallback-model", chat(t, c, "during the probe").Model, "one probe at a time")
	cancel()
	assert.ErrorIs(t, <-errc, context.Canceled)
	assert.Equal(t, breaker.HalfOpen, breakerState(c, 0), "the cancelled probe recorded nothing")

	assert.Equal(t, "primary-model", chat(t, c, "the next probe").Model)
	assert.Equal(t, breaker.Closed, breakerState(c, 0))
	assert.Equal(t, 5, primary.Stats().Requests)
	assert.Equal(t, 2, fallback.Stats().Requests)
}

// TestNeverEjectsEveryTarget: with every target out, the one out longest
// is tried rather than none.
func TestNeverEjectsEveryTarget(t *testing.T) {
	primary, fallback, c, cfg := twoTargets(t, Config{FailoverAfter: 1, MaxRetries: 5})
	clk := newManualClock()
	withClock(t, c, cfg, clk.now)
	primary.Script(llmtest.Status(503))
	fallback.Script(llmtest.Status(503), llmtest.Status(503))
	// primary 503 (out), fallback 503 (out), primary (out longest) OK.
	assert.Equal(t, "primary-model", chat(t, c, "all out").Model)
	assert.Equal(t, breaker.Closed, breakerState(c, 0), "its success put it back")
	assert.Equal(t, breaker.Open, breakerState(c, 1))

	// The fallback, still out, alone out: calls go to the primary.
	primary.Script(llmtest.Status(503))
	clk.advance(time.Second)
	// primary 503 (out again); both out, the fallback out longer: its
	// 503; then the primary, out longest now: OK.
	assert.Equal(t, "primary-model", chat(t, c, "rotate").Model)
	assert.Equal(t, 2, fallback.Stats().Requests)
	assert.Equal(t, 4, primary.Stats().Requests)
}

// TestSilentPrimaryCostsOneTimeout: a primary that says nothing costs the
// call one attempt timeout, after which the fallback answers at once,
// without the backoff's wait.
func TestSilentPrimaryCostsOneTimeout(t *testing.T) {
	const timeout = 200 * time.Millisecond
	primary, fallback, c, _ := twoTargets(t, Config{AttemptTimeout: timeout, Backoff: constantBackoff(10 * time.Second)})
	primary.Script(llmtest.Hang(), llmtest.Hang())
	start := time.Now()
	assert.Equal(t, "fallback-model", chat(t, c, "silence").Model)
	took := time.Since(start)
	t.Logf("silent primary, then the fallback: %v", took.Round(time.Millisecond))
	assert.GreaterOrEqual(t, took, timeout)
	assert.Less(t, took, 2*timeout, "one timeout, no backoff")
	assert.Equal(t, 1, primary.Stats().Requests)
	assert.Equal(t, 1, fallback.Stats().Requests)
}

// TestSilentTargetOneTimeout: a call whose every target was silent ends
// with that error after one timeout each, not one per retry.
func TestSilentTargetOneTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	srv := newServer(t)
	srv.Script(repeat(llmtest.Hang(), 4)...)
	c := newTestClient(t, srv, Config{AttemptTimeout: timeout, MaxRetries: 3})
	start := time.Now()
	_, err := c.Chat(context.Background(), "silence")
	took := time.Since(start)
	t.Logf("a single silent target: %v", took.Round(time.Millisecond))
	var re *RetryError
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 1, re.Attempts)
	assert.ErrorIs(t, err, errSilent)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "no target answered in time after 1 attempt")
	assert.Less(t, took, 3*timeout)
	assert.Equal(t, 1, srv.Stats().Requests)

	// Two targets, both silent: two timeouts.
	primary, fallback, c2, _ := twoTargets(t, Config{AttemptTimeout: timeout})
	primary.Script(llmtest.Hang())
	fallback.Script(llmtest.Hang())
	_, err = c2.Chat(context.Background(), "silence")
	require.ErrorAs(t, err, &re)
	assert.Equal(t, 2, re.Attempts)
	assert.Equal(t, 1, primary.Stats().Requests)
	assert.Equal(t, 1, fallback.Stats().Requests)
}

func contextTooLong() llmtest.Fault {
	return llmtest.Status(400).WithCode("context_length_exceeded")
}

// TestContextLengthGoesToLongContextTarget: a call too long for the
// primary goes to the LongContext target, once, with its model.
func TestContextLengthGoesToLongContextTarget(t *testing.T) {
	primary, fallback, _, _ := twoTargets(t, Config{})
	long := newServer(t)
	c := newTestClient(t, primary, Config{Model: "primary-model", Backoff: constantBackoff(10 * time.Second), Fallbacks: []Target{
		{BaseURL: fallback.URL, APIKey: fallbackKey, Model: "fallback-model"},
		{BaseURL: long.URL, Model: "long-model", LongContext: true},
	}})
	primary.Script(contextTooLong())
	start := time.Now()
	assert.Equal(t, "long-model", chat(t, c, "a long one").Model)
	assert.Less(t, time.Since(start), 5*time.Second, "no backoff before the move")
	assert.Equal(t, 1, primary.Stats().Requests)
	assert.Zero(t, fallback.Stats().Requests)
	assert.Equal(t, 1, long.Stats().Requests)
	assert.Equal(t, breaker.Closed, breakerState(c, 0), "the primary answered: it is alive")

	// Too long for the LongContext target too: that error, at once.
	primary.Script(contextTooLong())
	long.Script(contextTooLong())
	_, err := c.Chat(context.Background(), "longer still")
	assertContextTooLong(t, err)
	assert.Equal(t, 2, primary.Stats().Requests)
	assert.Equal(t, 2, long.Stats().Requests)
	assert.Zero(t, fallback.Stats().Requests)
}

// TestContextLengthReturnsAtOnce: without a LongContext target the error
// ends the call at once, never retried, even when the server says to.
func TestContextLengthReturnsAtOnce(t *testing.T) {
	primary, fallback, c, _ := twoTargets(t, Config{})
	primary.Script(contextTooLong().WithHeader("x-should-retry", "true"), llmtest.Status(503))
	_, err := c.Chat(context.Background(), "too long")
	assertContextTooLong(t, err)
	assert.Equal(t, 1, primary.Stats().Requests)
	assert.Zero(t, fallback.Stats().Requests)
}

// TestOther400sNeverRetried: a 400 of another code stays where it is,
// LongContext target or not.
func TestOther400sNeverRetried(t *testing.T) {
	primary := newServer(t)
	long := newServer(t)
	c := newTestClient(t, primary, Config{Fallbacks: []Target{{BaseURL: long.URL, LongContext: true}}})
	primary.Script(llmtest.Status(400), llmtest.Status(400).WithCode("content_policy_violation"))
	for range 2 {
		_, err := c.Chat(context.Background(), "bad")
		var apiErr *openai.APIError
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, 400, apiErr.HTTPStatusCode)
	}
	assert.Equal(t, 2, primary.Stats().Requests)
	assert.Zero(t, long.Stats().Requests)
}

func assertContextTooLong(t *testing.T, err error) {
	t.Helper()
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 400, apiErr.HTTPStatusCode)
	assert.Equal(t, "context_length_exceeded", apiErr.Code)
}

// TestStreamFailsOverBeforeFirstByte: a stream whose primary fails goes to
// the fallback, with its model.
func TestStreamFailsOverBeforeFirstByte(t *testing.T) {
	primary, fallback, c, _ := twoTargets(t, Config{FailoverAfter: 1})
	primary.Script(llmtest.Truncate(0)) // headers, a role chunk, cut: after the first byte
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("cut"))
	require.NoError(t, err)
	_, err = readStream(s)
	assert.Error(t, err, "a stream cut after its first byte is not replayed")
	require.NoError(t, s.Close())
	assert.Zero(t, fallback.Stats().Requests)

	primary.Script(llmtest.Reset()) // before the first byte: failed over
	s, err = c.CreateChatCompletionStream(context.Background(), userMsg("reset"))
	require.NoError(t, err)
	chunk, err := s.Recv()
	require.NoError(t, err)
	assert.Equal(t, "fallback-model", chunk.Model)
	_, err = readStream(s)
	require.NoError(t, err)
	require.NoError(t, s.Close())
}

func TestSetModel(t *testing.T) {
	for _, tc := range []struct{ body, model, want string }{
		{`{"model":"a","messages":[]}`, "b", `{"model":"b","messages":[]}`},
		{`{"model":"b","messages":[]}`, "b", ``},
		{`{"model":"","messages":[]}`, "b", `{"model":"b","messages":[]}`},
		{`{"model":"a\"q","x":1}`, "b", `{"model":"b","x":1}`},
		{`{"x":1,"model":"a"}`, "b", `{"model":"b","x":1}`},
		{`{"x":1,"model":"b"}`, "b", ``},
		{`{"x":1}`, "b", `{"model":"b","x":1}`},
		{`[1]`, "b", ``},
		{`not json`, "b", ``},
	} {
		assert.Equal(t, tc.want, string(setModel([]byte(tc.body), tc.model, true)), tc.body)
	}
	assert.Nil(t, withModel([]byte(`{"model":"a"}`), "b"), "a default replaces no model")
}

// TestTargetConfig: fields inherited, validated, and printed without keys.
func TestTargetConfig(t *testing.T) {
	t.Setenv(EnvAPIKey, "")
	r, err := resolve(Config{APIKey: fakeKey, BaseURL: "https://a.example.com/v1", FallbackURLs: []string{"https://b.example.com/v1"},
		Fallbacks: []Target{{Model: "m"}, {BaseURL: "https://C.example.com/v1/", APIKey: fallbackKey, LongContext: true}}})
	require.NoError(t, err)
	assert.Equal(t, []Target{
		{BaseURL: "https://a.example.com/v1", APIKey: fakeKey},
		{BaseURL: "https://b.example.com/v1", APIKey: fakeKey},
		{BaseURL: "https://a.example.com/v1", APIKey: fakeKey, Model: "m"},
		{BaseURL: "https://c.example.com/v1", APIKey: fallbackKey, LongContext: true},
	}, r.targets)
	assert.Equal(t, DefaultCooldown, r.Cooldown)
	assert.Equal(t, DefaultMaxCooldown, r.MaxCooldown)
	r, err = resolve(Config{APIKey: fakeKey, Cooldown: time.Minute})
	require.NoError(t, err)
	assert.Equal(t, time.Minute, r.MaxCooldown, "the cap is never below the cool-down")

	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{APIKey: fakeKey, Fallbacks: []Target{{BaseURL: "http://10.0.0.1/v1"}}}, "Fallbacks[0].BaseURL"},
		{Config{APIKey: fakeKey, Fallbacks: []Target{{}, {APIKey: fallbackKey + "\n"}}}, "Fallbacks[1].APIKey"},
		{Config{APIKey: fakeKey, Fallbacks: []Target{{Model: "m\x00"}}}, "Fallbacks[0].Model"},
		{Config{APIKey: fakeKey, Cooldown: -1}, "Cooldown"},
		{Config{APIKey: fakeKey, MaxCooldown: -1}, "MaxCooldown"},
		{Config{APIKey: fakeKey, Cooldown: time.Minute, MaxCooldown: time.Second}, "MaxCooldown"},
	} {
		_, err := New(tc.cfg)
		var ce *ConfigError
		require.ErrorAs(t, err, &ce, tc.field)
		assert.Equal(t, tc.field, ce.Field)
		assert.NotContains(t, err.Error(), leakMarker)
	}

	tg := Target{BaseURL: "https://u:" + fallbackKey + "@x.example.com/v1", APIKey: fallbackKey, Model: "m", LongContext: true}
	assert.Equal(t, `{BaseURL: "https://xxxxx@x.example.com/v1", APIKey: [redacted], Model: "m", LongContext: true}`, tg.String())
	cfg := Config{APIKey: fakeKey, Fallbacks: []Target{tg}}
	assert.Contains(t, cfg.String(), `Fallbacks: [{BaseURL: "https://xxxxx@x.example.com/v1", APIKey: [redacted], Model: "m", LongContext: true}]`)
}

func constantBackoff(d time.Duration) func() backoff.BackOff {
	return func() backoff.BackOff { return backoff.NewConstantBackOff(d) }
}

// countingTransport counts the attempts at one host, and those that
// failed to connect.
type countingTransport struct {
	base            http.RoundTripper
	host            string
	mu              sync.Mutex
	attempts, fails int
}

func (ct *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := ct.base.RoundTrip(req)
	if req.URL.Host == ct.host {
		ct.mu.Lock()
		ct.attempts++
		if err != nil {
			ct.fails++
		}
		ct.mu.Unlock()
	}
	return resp, err
}

func (ct *countingTransport) counts() (int, int) {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	return ct.attempts, ct.fails
}

// TestOutageScaledDown measures a one-minute outage of the primary scaled
// down 50 times (60 s → 1.2 s, the default 5 s cool-down and 30 s cap →
// 100 ms and 600 ms), under one caller making a call every 10 ms: how many
// attempts hit the dead primary, how many calls failed, and how long after
// the primary's return the traffic came back; with the breaker, and with
// ejection made impossible (FailoverAfter huge: every call retries the
// primary, as a client without failover would).
func TestOutageScaledDown(t *testing.T) {
	if testing.Short() {
		t.Skip("a 3 s measurement")
	}
	const (
		scale    = 50
		before   = 200 * time.Millisecond
		outage   = time.Minute / scale
		after    = time.Second
		interval = 10 * time.Millisecond
	)
	for _, tc := range []struct {
		name          string
		failoverAfter int
	}{{"breaker", 0}, {"no ejection", 1 << 30}} {
		t.Run(tc.name, func(t *testing.T) {
			primary := llmtest.NewServer(llmtest.WithAPIKey(fakeKey), llmtest.WithModels())
			addr := primary.URL[len("http://") : len(primary.URL)-len("/v1")]
			fallback := newServer(t)
			ct := &countingTransport{base: http.DefaultTransport.(*http.Transport).Clone(), host: addr}
			defer ct.base.(*http.Transport).CloseIdleConnections()
			c := newTestClient(t, primary, Config{
				HTTPClient:    &http.Client{Transport: ct},
				FailoverAfter: tc.failoverAfter,
				Cooldown:      DefaultCooldown / scale, MaxCooldown: DefaultMaxCooldown / scale,
				Backoff:   constantBackoff(interval),
				Fallbacks: []Target{{BaseURL: fallback.URL, Model: "fallback-model"}},
			})
			var (
				down, up            time.Time
				failed, byFallback  int
				calls, deadAttempts int
				failback            time.Duration = -1
			)
			start := time.Now()
			for time.Since(start) < before+outage+after {
				switch {
				case down.IsZero() && time.Since(start) >= before:
					primary.Close()
					down = time.Now()
				case up.IsZero() && !down.IsZero() && time.Since(down) >= outage:
					_, deadAttempts = ct.counts() // refused: at the dead primary
					primary = llmtest.NewServer(llmtest.WithAPIKey(fakeKey), llmtest.WithModels(), llmtest.WithAddr(addr))
					defer primary.Close()
					up = time.Now()
				}
				calls++
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				resp, err := c.CreateChatCompletion(ctx, userMsg("steady"))
				cancel()
				switch {
				case err != nil:
					failed++
				case resp.Model == "fallback-model":
					byFallback++
				case !up.IsZero() && failback < 0:
					failback = time.Since(up)
				}
				time.Sleep(interval)
			}
			attempts, _ := ct.counts()
			t.Logf("%s: %d calls in %v; outage %v: %d attempts at the dead primary, %d calls failed, %d answered by the fallback; failback %v after the primary's return; %d attempts at the primary in all",
				tc.name, calls, time.Since(start).Round(time.Millisecond), outage, deadAttempts, failed, byFallback, failback.Round(time.Millisecond), attempts)
			if tc.failoverAfter == 0 {
				assert.Zero(t, failed)
				assert.LessOrEqual(t, deadAttempts, DefaultFailoverAfter+6, "three to eject, then a probe per cool-down")
				assert.GreaterOrEqual(t, failback, time.Duration(0), "failed back")
				assert.Less(t, failback, DefaultMaxCooldown/scale+300*time.Millisecond)
			} else {
				assert.Positive(t, failed)
			}
		})
	}
}

// TestPanickingProbeFreesItsPlace: a probe whose call panics (ShouldRetry
// is the caller's code) does not hold the half-open place for good.
func TestPanickingProbeFreesItsPlace(t *testing.T) {
	var panicking atomic.Bool
	primary, _, c, cfg := twoTargets(t, Config{ShouldRetry: func(resp *http.Response, err error) bool {
		if panicking.Load() {
			panic("the caller's policy failed")
		}
		return DefaultShouldRetry(resp, err)
	}})
	clk := newManualClock()
	withClock(t, c, cfg, clk.now)
	primary.Script(repeat(llmtest.Status(503), 3)...)
	chat(t, c, "eject")
	clk.advance(DefaultCooldown)

	panicking.Store(true)
	func() {
		defer func() { assert.NotNil(t, recover()) }()
		_, _ = c.Chat(context.Background(), "the probe panics")
	}()
	panicking.Store(false)
	assert.Equal(t, breaker.HalfOpen, breakerState(c, 0))
	assert.Equal(t, "primary-model", chat(t, c, "the next probe").Model)
	assert.Equal(t, breaker.Closed, breakerState(c, 0))
}

// TestAttemptHeadersShared: over net/http's Transport, attempts at a
// target whose requests carry the same headers share one map with the
// target's Authorization, made from a copy; other headers get their own.
func TestAttemptHeadersShared(t *testing.T) {
	tg := &target{authHeader: "Authorization", authz: []string{"Bearer " + fakeKey}}
	json := http.Header{"Accept": {"application/json"}, "Content-Type": {"application/json"}}
	stream := http.Header{"Accept": {"text/event-stream"}, "Cache-Control": {"no-cache"}, "Connection": {"keep-alive"}, "Content-Type": {"application/json"}}

	a := tg.headers(json, true)
	assert.Equal(t, []string{"Bearer " + fakeKey}, a["Authorization"])
	assert.Equal(t, []string{"application/json"}, a["Accept"])
	assert.Len(t, a, 3)
	s := tg.headers(stream, true)
	assert.Equal(t, []string{"text/event-stream"}, s["Accept"])
	assert.Len(t, s, 5)
	b := tg.headers(http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json"}}, true)
	assert.Equal(t, reflectPointer(a), reflectPointer(b), "the same headers share one map")

	// Made from a copy: the request's own map and values are its own.
	json["Accept"][0] = "changed"
	json["X-Extra"] = []string{"1"}
	assert.Equal(t, []string{"application/json"}, tg.headers(http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json"}}, true)["Accept"])
	assert.NotContains(t, b, "X-Extra")

	// Credentials that came with the request stay out, shared or not.
	azure := http.Header{"Accept": {"application/json"}, "Api-Key": {""}, "Authorization": {"Bearer other"}}
	for _, share := range []bool{true, false} {
		h := tg.headers(azure, share)
		assert.Equal(t, []string{"Bearer " + fakeKey}, h["Authorization"])
		assert.NotContains(t, h, "Api-Key")
		assert.Len(t, h, 2)
	}

	// Not shared: a new map each time.
	c := tg.headers(json, false)
	assert.NotEqual(t, reflectPointer(c), reflectPointer(tg.headers(json, false)))
	assert.Equal(t, []string{"Bearer " + fakeKey}, c["Authorization"])

	// Bounded: odd headers do not grow the list without end.
	for i := range 2 * maxHeaderSets {
		tg.headers(http.Header{"X-N": {string(rune('a' + i))}}, true)
	}
	assert.Len(t, *tg.headerSets.Load(), maxHeaderSets)
}

// reflectPointer identifies h's map.
func reflectPointer(h http.Header) uintptr { return reflect.ValueOf(h).Pointer() }

// headerWriter is a base transport that, against the http.RoundTripper
// contract but as many wrappers do, writes into the request's headers.
type headerWriter struct{ next http.RoundTripper }

func (w headerWriter) RoundTrip(req *http.Request) (*http.Response, error) {
	req.Header.Set("X-Written", "1")
	return w.next.RoundTrip(req)
}

// TestAttemptHeadersOwnOverOtherTransports: over a base transport that is
// not net/http's, each attempt gets a map of its own, so one that writes
// into it races with no other call (-race would see it, and concurrent map
// writes are fatal).
func TestAttemptHeadersOwnOverOtherTransports(t *testing.T) {
	srv := newServer(t)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	c := newTestClient(t, srv, Config{HTTPClient: &http.Client{Transport: headerWriter{tr}}})
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := c.CreateChatCompletion(context.Background(), userMsg("hello"))
			assert.NoError(t, err)
		}()
	}
	wg.Wait()
	assert.Equal(t, 16, srv.Stats().Succeeded)
	assert.Zero(t, srv.Stats().Faults, "every call had the key")
}
