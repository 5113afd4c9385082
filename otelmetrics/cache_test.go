package otelmetrics

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"

	"github.com/llmdrain/llmdrain"
)

// traffic drives every hook with models distinct calls (and as many
// distinct attempt reasons and wait reasons), each combination three times,
// half of them answered by another target than the one they started on.
func traffic(h *llmdrain.Hooks, models int) {
	const a, b = "https://a.example.com/v1", "http://b.example.com:8080/v1"
	for rep := range 3 {
		for m := range models {
			start := llmdrain.CallStartInfo{Operation: llmdrain.OpChat, Model: fmt.Sprintf("model-%d", m), Target: a}
			h.CallStart(start)
			h.AttemptDone(llmdrain.AttemptInfo{Target: a, Attempt: 1, Status: 500, Outcome: "failed",
				Reason: fmt.Sprintf("reason-%d", m), Retry: true})
			h.Waited(llmdrain.WaitInfo{Target: a, Reason: llmdrain.WaitReason(fmt.Sprintf("wait-%d", m)), Duration: time.Duration(m) * time.Millisecond})
			done := llmdrain.CallDoneInfo{CallStartInfo: start, ResponseModel: start.Model + "-2025", Target: a,
				Duration: time.Duration(m+rep) * 10 * time.Millisecond,
				Usage:    llmdrain.Usage{InputTokens: 10 + m, OutputTokens: 100 + rep, Known: true},
				Cost:     llmdrain.Cost{USD: 0.001 * float64(m+1)}}
			switch m % 4 {
			case 1:
				done.Target = b
			case 2:
				done.ErrorType, done.Err, done.Usage, done.Cost = "500", errors.New("failed"), llmdrain.Usage{}, llmdrain.Cost{Unknown: true}
			case 3:
				done.Stream, done.TimeToFirstChunk = true, time.Duration(m)*time.Millisecond
			}
			h.CallDone(done)
		}
		h.TargetChange(llmdrain.TargetChangeInfo{Target: a, From: llmdrain.TargetHealthy, To: llmdrain.TargetEjected, Ejections: rep + 1})
		h.TargetChange(llmdrain.TargetChangeInfo{Target: a, From: llmdrain.TargetEjected, To: llmdrain.TargetHealthy})
		h.DrainDone(llmdrain.DrainDoneInfo{Duration: time.Second, Forced: make([]llmdrain.CallInfo, rep)})
	}
}

// record runs traffic through hooks keeping at most maxCached sets and
// returns what a ManualReader collects, with the recorder.
func record(t *testing.T, maxCached, models int) (metricdata.ResourceMetrics, *recorder) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	r, err := newHooks(mp, maxCached)
	require.NoError(t, err)
	traffic(r.hooks(), models)
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	return rm, r
}

// entries counts what a cache holds.
func entries[K comparable, V any](c *cache[K, V]) int {
	if m := c.m.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// The sets kept are the sets each measurement would build: the same data
// points whether every set is cached, none is, or the cache is full.
func TestCachedSetsRecordTheSameDataPoints(t *testing.T) {
	const models = 40
	built, r := record(t, 0, models)
	require.Zero(t, entries(&r.calls)+entries(&r.other), "a cache of 0 sets keeps none")
	require.Len(t, built.ScopeMetrics, 1)
	var names []string
	for _, m := range built.ScopeMetrics[0].Metrics {
		names = append(names, m.Name)
	}
	// Every instrument but the budget refusals, which this traffic has none of.
	require.Len(t, names, 13, "%v", names)
	for _, max := range []int{8, MaxCachedSets} {
		cached, _ := record(t, max, models)
		metricdatatest.AssertEqual(t, built, cached, metricdatatest.IgnoreTimestamp())
	}
}

// However many combinations come, concurrently, the caches keep at most
// their bound, and the first ones seen are the ones kept.
func TestCachedSetsBounded(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	const max = 16
	r, err := newHooks(mp, max)
	require.NoError(t, err)
	h := r.hooks()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { traffic(h, 100) })
	}
	wg.Wait()
	assert.Equal(t, max, entries(&r.calls))
	assert.Equal(t, max, entries(&r.other))

	// A combination kept is found again: the same options, not a copy.
	k := callKey{operation: string(llmdrain.OpChat), requestModel: "kept", target: "https://a.example.com/v1"}
	r2, err := newHooks(mp, max)
	require.NoError(t, err)
	first := r2.callAttrs(k)
	assert.Same(t, first, r2.callAttrs(k))
	// Past the bound a set is built for each measurement.
	r3, err := newHooks(mp, 0)
	require.NoError(t, err)
	assert.NotSame(t, r3.callAttrs(k), r3.callAttrs(k))
}

// Past their bound, the observable counts go to one series marked
// otel.metric.overflow, and nothing is lost: the attempts add up, and the
// calls in flight, counted there too, come back to 0 there, where they are
// still reported.
func TestCountsPastTheBoundOverflow(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	r, err := newHooks(mp, MaxCachedSets)
	require.NoError(t, err)
	r.inFlightN.init(4)
	r.attemptN.init(4)
	h := r.hooks()
	const calls = 10
	var starts []llmdrain.CallStartInfo
	for m := range calls {
		start := llmdrain.CallStartInfo{Operation: llmdrain.OpChat, Model: fmt.Sprintf("model-%d", m), Target: "https://a.example.com/v1"}
		starts = append(starts, start)
		h.CallStart(start)
		h.AttemptDone(llmdrain.AttemptInfo{Target: start.Target, Attempt: 1, Status: 500, Outcome: "failed", Reason: fmt.Sprintf("reason-%d", m)})
	}
	collect := func() (inFlight, attempts map[bool][]int64) {
		var rm metricdata.ResourceMetrics
		require.NoError(t, reader.Collect(context.Background(), &rm))
		inFlight, attempts = map[bool][]int64{}, map[bool][]int64{}
		for _, m := range rm.ScopeMetrics[0].Metrics {
			into := map[string]map[bool][]int64{"llmdrain.client.calls.in_flight": inFlight, "llmdrain.client.attempts": attempts}[m.Name]
			if into == nil {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				_, over := dp.Attributes.Value(overflowKey)
				into[over] = append(into[over], dp.Value)
			}
		}
		return inFlight, attempts
	}
	inFlight, attempts := collect()
	assert.Equal(t, []int64{1, 1, 1, 1}, inFlight[false])
	assert.Equal(t, []int64{calls - 4}, inFlight[true], "the rest in the overflow series")
	assert.Equal(t, []int64{1, 1, 1, 1}, attempts[false])
	assert.Equal(t, []int64{calls - 4}, attempts[true])
	for _, start := range starts {
		h.CallDone(llmdrain.CallDoneInfo{CallStartInfo: start, Target: start.Target, Attempts: 1})
	}
	inFlight, _ = collect()
	assert.Equal(t, []int64{0, 0, 0, 0}, inFlight[false])
	assert.Equal(t, []int64{0}, inFlight[true], "back to 0, and still reported")
}
