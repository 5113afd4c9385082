package otelmetrics_test

import (
	"context"
	"errors"
	"io"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.uber.org/goleak"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
	"github.com/llmdrain/llmdrain/otelmetrics"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testKey = "sk-otelmetrics-test-0123456789"

// env is a client recording into a ManualReader, against an llmtest
// server.
type env struct {
	t      *testing.T
	srv    *llmtest.Server
	reader *sdkmetric.ManualReader
	client *llmdrain.Client
}

func newEnv(t *testing.T, edit func(*llmdrain.Config), opts ...llmtest.Option) *env {
	t.Helper()
	srv := llmtest.NewServer(append(opts, llmtest.WithAPIKey(testKey))...)
	t.Cleanup(srv.Close)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	hooks, err := otelmetrics.New(mp, otelmetrics.WithProviderName("holysheep"))
	require.NoError(t, err)
	cfg := llmdrain.Config{
		APIKey: testKey, BaseURL: srv.URL, Model: "gpt-4o-mini", Hooks: hooks,
		// No waits between attempts: the tests count them, not time them.
		Backoff: func() backoff.BackOff { return &backoff.ZeroBackOff{} },
	}
	if edit != nil {
		edit(&cfg)
	}
	client, err := llmdrain.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Shutdown(context.Background()) })
	return &env{t: t, srv: srv, reader: reader, client: client}
}

// collect reads every metric, by name.
func (e *env) collect() map[string]metricdata.Metrics {
	e.t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(e.t, e.reader.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		assert.Equal(e.t, otelmetrics.ScopeName, sm.Scope.Name)
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

func (e *env) host() (string, int) {
	u, err := url.Parse(e.srv.URL)
	require.NoError(e.t, err)
	port, err := strconv.Atoi(u.Port())
	require.NoError(e.t, err)
	return u.Hostname(), port
}

// kvs is an attribute set as a map, for readable assertions.
func kvs(s attribute.Set) map[string]any {
	out := map[string]any{}
	for _, kv := range s.ToSlice() {
		out[string(kv.Key)] = kv.Value.AsInterface()
	}
	return out
}

// histograms returns the data points of a histogram metric.
func histograms[N int64 | float64](t *testing.T, m metricdata.Metrics) []metricdata.HistogramDataPoint[N] {
	t.Helper()
	h, ok := m.Data.(metricdata.Histogram[N])
	require.True(t, ok, "%s is a %T", m.Name, m.Data)
	return h.DataPoints
}

// sums returns the data points of a counter or up-down counter.
func sums(t *testing.T, m metricdata.Metrics) []metricdata.DataPoint[int64] {
	t.Helper()
	s, ok := m.Data.(metricdata.Sum[int64])
	require.True(t, ok, "%s is a %T", m.Name, m.Data)
	return s.DataPoints
}

// chat makes a plain call and returns its usage.
func (e *env) chat(prompt string) (openai.Usage, error) {
	resp, err := e.client.CreateChatCompletion(context.Background(), openai.ChatCompletionRequest{
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: prompt}},
	})
	return resp.Usage, err
}

// stream makes a streamed call, reads it to its end and returns its text.
func (e *env) stream(prompt string) string {
	e.t.Helper()
	s, err := e.client.CreateChatCompletionStream(context.Background(), openai.ChatCompletionRequest{
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: prompt}},
	})
	require.NoError(e.t, err)
	defer s.Close()
	var text string
	for {
		chunk, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return text
		}
		require.NoError(e.t, err)
		if len(chunk.Choices) > 0 {
			text += chunk.Choices[0].Delta.Content
		}
	}
}

func TestGenAIMetricsOfPlainCalls(t *testing.T) {
	e := newEnv(t, nil)
	var input, output int
	for _, p := range []string{"one two three", "four five"} {
		u, err := e.chat(p)
		require.NoError(t, err)
		input, output = input+u.PromptTokens, output+u.CompletionTokens
	}
	st := e.srv.Stats()
	require.Equal(t, st.PromptTokens, input)
	require.Equal(t, st.CompletionTokens, output)

	host, port := e.host()
	m := e.collect()
	dur := histograms[float64](t, m["gen_ai.client.operation.duration"])
	require.Len(t, dur, 1)
	assert.Equal(t, "s", m["gen_ai.client.operation.duration"].Unit)
	assert.Equal(t, map[string]any{
		"gen_ai.operation.name": "chat", "gen_ai.provider.name": "holysheep",
		"gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini",
		"server.address": host, "server.port": int64(port),
	}, kvs(dur[0].Attributes))
	assert.Equal(t, uint64(2), dur[0].Count)
	assert.Equal(t, otelmetrics.DurationBuckets, dur[0].Bounds)
	assert.Greater(t, dur[0].Sum, 0.0)

	tok := histograms[int64](t, m["gen_ai.client.token.usage"])
	require.Len(t, tok, 2)
	assert.Equal(t, "{token}", m["gen_ai.client.token.usage"].Unit)
	byType := map[any]metricdata.HistogramDataPoint[int64]{}
	for _, dp := range tok {
		byType[kvs(dp.Attributes)["gen_ai.token.type"]] = dp
		assert.Equal(t, otelmetrics.TokenBuckets, dp.Bounds)
		assert.NotContains(t, kvs(dp.Attributes), "error.type")
	}
	assert.Equal(t, int64(input), byType["input"].Sum, "input tokens as llmtest billed them")
	assert.Equal(t, int64(output), byType["output"].Sum, "output tokens as llmtest billed them")
	assert.Equal(t, uint64(2), byType["input"].Count)

	assert.NotContains(t, m, "gen_ai.client.operation.time_to_first_chunk", "no stream, no time to first chunk")
	inFlight := sums(t, m["llmdrain.client.calls.in_flight"])
	require.Len(t, inFlight, 1)
	assert.Zero(t, inFlight[0].Value)
	attempts := sums(t, m["llmdrain.client.attempts"])
	require.Len(t, attempts, 1)
	assert.Equal(t, int64(2), attempts[0].Value)
	assert.Equal(t, "healthy", kvs(attempts[0].Attributes)["llmdrain.attempt.outcome"])
}

func TestTimeToFirstChunkAndStreamedUsage(t *testing.T) {
	e := newEnv(t, nil, llmtest.WithLatency(30*time.Millisecond), llmtest.WithChunkDelay(5*time.Millisecond))
	start := time.Now()
	text := e.stream("tell me a short story please")
	took := time.Since(start)
	require.NotEmpty(t, text)

	m := e.collect()
	ttfc := histograms[float64](t, m["gen_ai.client.operation.time_to_first_chunk"])
	require.Len(t, ttfc, 1)
	assert.Equal(t, uint64(1), ttfc[0].Count)
	assert.GreaterOrEqual(t, ttfc[0].Sum, 0.030, "not before the server's latency")
	assert.Less(t, ttfc[0].Sum, took.Seconds(), "before the stream's end")
	dur := histograms[float64](t, m["gen_ai.client.operation.duration"])
	require.Len(t, dur, 1)
	assert.Greater(t, dur[0].Sum, ttfc[0].Sum, "the whole stream outlasts its first chunk")

	st := e.srv.Stats()
	tok := histograms[int64](t, m["gen_ai.client.token.usage"])
	require.Len(t, tok, 2, "the stream's usage event was read")
	for _, dp := range tok {
		want := st.PromptTokens
		if kvs(dp.Attributes)["gen_ai.token.type"] == "output" {
			want = st.CompletionTokens
		}
		assert.Equal(t, int64(want), dp.Sum)
	}
}

func TestRetriesWaitsAndErrors(t *testing.T) {
	e := newEnv(t, nil)
	e.srv.Script(llmtest.RateLimitedMS(20*time.Millisecond), llmtest.Status(500))
	_, err := e.chat("retried twice")
	require.NoError(t, err)
	e.srv.Script(llmtest.Status(400))
	_, err = e.chat("refused")
	require.Error(t, err)

	m := e.collect()
	attempts := map[[2]any]int64{}
	for _, dp := range sums(t, m["llmdrain.client.attempts"]) {
		a := kvs(dp.Attributes)
		attempts[[2]any{a["llmdrain.attempt.outcome"], a["llmdrain.attempt.reason"]}] = dp.Value
	}
	assert.Equal(t, map[[2]any]int64{
		{"overloaded", "429"}: 1, {"broken", "5xx"}: 1, {"healthy", nil}: 1, {"healthy", "4xx"}: 1,
	}, attempts)

	retries := map[any]int64{}
	for _, dp := range sums(t, m["llmdrain.client.retries"]) {
		retries[kvs(dp.Attributes)["llmdrain.retry.reason"]] = dp.Value
	}
	assert.Equal(t, map[any]int64{"429": 1, "5xx": 1}, retries)

	waits := map[any]uint64{}
	for _, dp := range histograms[float64](t, m["llmdrain.client.wait.duration"]) {
		waits[kvs(dp.Attributes)["llmdrain.wait.reason"]] += dp.Count
	}
	assert.Equal(t, uint64(1), waits["retry_after"], "the 429's retry-after-ms, longer than the zero backoff")

	errorTypes := map[any]uint64{}
	for _, dp := range histograms[float64](t, m["gen_ai.client.operation.duration"]) {
		errorTypes[kvs(dp.Attributes)["error.type"]] += dp.Count
	}
	assert.Equal(t, map[any]uint64{nil: 1, "400": 1}, errorTypes)
}

func TestInFlightAndForcedDrain(t *testing.T) {
	e := newEnv(t, nil)
	e.srv.Script(llmtest.Hang())
	done := make(chan error, 1)
	go func() {
		_, err := e.chat("hangs until the drain forces it")
		done <- err
	}()
	require.Eventually(t, func() bool { return e.client.Tracker().InFlight() == 1 }, 10*time.Second, time.Millisecond)
	inFlight := sums(t, e.collect()["llmdrain.client.calls.in_flight"])
	require.Len(t, inFlight, 1)
	assert.Equal(t, int64(1), inFlight[0].Value, "one call in flight")

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	var forced *llmdrain.ForcedDrainError
	require.ErrorAs(t, e.client.Shutdown(ctx), &forced)
	require.Error(t, <-done)

	m := e.collect()
	inFlight = sums(t, m["llmdrain.client.calls.in_flight"])
	require.Len(t, inFlight, 1)
	assert.Zero(t, inFlight[0].Value, "back to 0 once the drain forced it")
	drains := histograms[float64](t, m["llmdrain.drain.duration"])
	require.Len(t, drains, 1)
	assert.Equal(t, map[string]any{"llmdrain.drain.forced": true}, kvs(drains[0].Attributes))
	assert.Equal(t, uint64(1), drains[0].Count)
	assert.GreaterOrEqual(t, drains[0].Sum, 0.050, "at least the drain's timeout")
	forcedCalls := sums(t, m["llmdrain.drain.forced_calls"])
	require.Len(t, forcedCalls, 1)
	assert.Equal(t, int64(1), forcedCalls[0].Value)
	errorTypes := map[any]uint64{}
	for _, dp := range histograms[float64](t, m["gen_ai.client.operation.duration"]) {
		errorTypes[kvs(dp.Attributes)["error.type"]] += dp.Count
	}
	assert.Equal(t, map[any]uint64{"forced_shutdown": 1}, errorTypes)
}

func TestCleanDrain(t *testing.T) {
	e := newEnv(t, nil)
	_, err := e.chat("before the drain")
	require.NoError(t, err)
	require.NoError(t, e.client.Shutdown(context.Background()))
	_, err = e.chat("after it")
	require.ErrorIs(t, err, llmdrain.ErrDraining)

	m := e.collect()
	drains := histograms[float64](t, m["llmdrain.drain.duration"])
	require.Len(t, drains, 1)
	assert.Equal(t, map[string]any{"llmdrain.drain.forced": false}, kvs(drains[0].Attributes))
	forcedCalls := sums(t, m["llmdrain.drain.forced_calls"])
	require.Len(t, forcedCalls, 1)
	assert.Zero(t, forcedCalls[0].Value, "the series exists, at 0")
	errorTypes := map[any]uint64{}
	for _, dp := range histograms[float64](t, m["gen_ai.client.operation.duration"]) {
		errorTypes[kvs(dp.Attributes)["error.type"]] += dp.Count
	}
	assert.Equal(t, map[any]uint64{nil: 1, "draining": 1}, errorTypes)
	inFlight := sums(t, m["llmdrain.client.calls.in_flight"])
	for _, dp := range inFlight {
		assert.Zero(t, dp.Value)
	}
}

func TestTargetEjection(t *testing.T) {
	fallback := llmtest.NewServer(llmtest.WithAPIKey(testKey))
	t.Cleanup(fallback.Close)
	e := newEnv(t, func(c *llmdrain.Config) {
		c.FallbackURLs = []string{fallback.URL}
		c.FailoverAfter = 2
		c.Cooldown = time.Hour // stays ejected for the test
	})
	e.srv.Script(llmtest.Status(503), llmtest.Status(503))
	_, err := e.chat("fails over")
	require.NoError(t, err)

	host, port := e.host()
	m := e.collect()
	ej := sums(t, m["llmdrain.target.ejections"])
	require.Len(t, ej, 1)
	assert.Equal(t, int64(1), ej[0].Value)
	assert.Equal(t, map[string]any{"server.address": host, "server.port": int64(port)}, kvs(ej[0].Attributes))

	g, ok := m["llmdrain.target.state"].Data.(metricdata.Gauge[int64])
	require.True(t, ok)
	states := map[any]int64{}
	for _, dp := range g.DataPoints {
		a := kvs(dp.Attributes)
		if a["server.port"] == int64(port) {
			states[a["llmdrain.target.state"]] = dp.Value
		}
	}
	assert.Equal(t, map[any]int64{"healthy": 0, "ejected": 1}, states)
}

func TestNew(t *testing.T) {
	_, err := otelmetrics.New(sdkmetric.NewMeterProvider(), otelmetrics.WithProviderName(""))
	assert.ErrorIs(t, err, otelmetrics.ErrEmptyProviderName)
	h, err := otelmetrics.New(nil)
	require.NoError(t, err, "nil: the global MeterProvider")
	assert.NotNil(t, h.CallStart)
}

func TestCostAndBudgetRefusals(t *testing.T) {
	// Per million tokens; MaxOutput bounds a request without max_tokens.
	prices := llmdrain.Prices{"gpt-4o-mini": {Input: 2, Output: 8, MaxOutput: 100}}
	e := newEnv(t, func(c *llmdrain.Config) { c.Prices = prices })
	var input, output int
	for _, p := range []string{"priced once", "priced twice over"} {
		u, err := e.chat(p)
		require.NoError(t, err)
		input, output = input+u.PromptTokens, output+u.CompletionTokens
	}
	// A model without a price: paid for, at a cost not known.
	_, err := e.client.CreateChatCompletion(context.Background(), openai.ChatCompletionRequest{
		Model:    "gpt-4o",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "unpriced"}},
	})
	require.NoError(t, err)

	m := e.collect()
	cost, ok := m["llmdrain.client.cost.usd"].Data.(metricdata.Sum[float64])
	require.True(t, ok, "%T", m["llmdrain.client.cost.usd"].Data)
	assert.Equal(t, "{USD}", m["llmdrain.client.cost.usd"].Unit)
	require.Len(t, cost.DataPoints, 1)
	assert.InDelta(t, (float64(input)*2+float64(output)*8)/1e6, cost.DataPoints[0].Value, 1e-12)
	assert.Equal(t, "gpt-4o-mini", kvs(cost.DataPoints[0].Attributes)["gen_ai.request.model"])

	unknown := sums(t, m["llmdrain.client.cost.unknown"])
	require.Len(t, unknown, 1)
	assert.Equal(t, int64(1), unknown[0].Value)
	assert.Equal(t, "gpt-4o", kvs(unknown[0].Attributes)["gen_ai.request.model"])
	assert.NotContains(t, m, "llmdrain.client.budget.refusals")
}

func TestBudgetRefusals(t *testing.T) {
	prices := llmdrain.Prices{"gpt-4o-mini": {Input: 2, Output: 8, MaxOutput: 100}}
	e := newEnv(t, func(c *llmdrain.Config) { c.Prices = prices; c.MaxCost = 0.01 })
	_, err := e.chat("within the cap")
	require.NoError(t, err)
	// Worst case 1,000,000 output tokens at $8 per million: over the cap.
	_, err = e.client.CreateChatCompletion(context.Background(), openai.ChatCompletionRequest{
		MaxCompletionTokens: 1_000_000,
		Messages:            []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "too dear"}},
	})
	require.ErrorIs(t, err, llmdrain.ErrBudgetExceeded)

	m := e.collect()
	refusals := sums(t, m["llmdrain.client.budget.refusals"])
	require.Len(t, refusals, 1)
	assert.Equal(t, int64(1), refusals[0].Value)
	errorTypes := map[any]uint64{}
	for _, dp := range histograms[float64](t, m["gen_ai.client.operation.duration"]) {
		errorTypes[kvs(dp.Attributes)["error.type"]] += dp.Count
	}
	assert.Equal(t, map[any]uint64{nil: 1, "budget_exceeded": 1}, errorTypes)
	assert.Equal(t, 1, e.srv.Stats().Requests, "the refused call sent nothing")
}
