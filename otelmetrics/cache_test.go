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
	k := callKey{operation: string(llmdrain.OpChat), requestModel: "kept", startTarget: "https://a.example.com/v1", target: "https://a.example.com/v1"}
	r2, err := newHooks(mp, max)
	require.NoError(t, err)
	first := r2.callAttrs(k)
	assert.Same(t, first, r2.callAttrs(k))
	// Past the bound a set is built for each measurement.
	r3, err := newHooks(mp, 0)
	require.NoError(t, err)
	assert.NotSame(t, r3.callAttrs(k), r3.callAttrs(k))
}
