// Package otelmetrics records what an llmdrain Client does as OpenTelemetry
// metrics: the GenAI semantic conventions' client metrics (operation
// duration, token usage, time to first chunk), plus llmdrain's own (calls in
// flight, attempts and retries, waits, drains, target ejections).
//
// It is a module of its own so that the library's go.mod stays free of
// OpenTelemetry. New turns a MeterProvider into llmdrain.Hooks:
//
//	hooks, err := otelmetrics.New(provider, otelmetrics.WithProviderName("openai"))
//	cfg.Hooks = hooks
//	client, err := llmdrain.New(cfg)
//
// Exported through go.opentelemetry.io/otel/exporters/prometheus, the
// names follow Prometheus' conventions: gen_ai_client_operation_duration_seconds,
// gen_ai_client_token_usage, llmdrain_client_calls_in_flight and so on.
//
// The instruments, all synchronous, recorded from the hooks:
//
//	gen_ai.client.operation.duration              histogram, s: every call, retries and waits included
//	gen_ai.client.token.usage                     histogram, {token}: per call whose answer carried usage, by gen_ai.token.type (input, output)
//	gen_ai.client.operation.time_to_first_chunk   histogram, s: streams, to their first data event
//	llmdrain.client.calls.in_flight               up-down counter, {call}
//	llmdrain.client.attempts                      counter, {attempt}: by llmdrain.attempt.outcome and llmdrain.attempt.reason
//	llmdrain.client.retries                       counter, {retry}: attempts followed by another, by llmdrain.retry.reason
//	llmdrain.client.wait.duration                 histogram, s: by llmdrain.wait.reason (backoff, retry_after, concurrency, ...)
//	llmdrain.drain.duration                       histogram, s: each drain, by llmdrain.drain.forced
//	llmdrain.drain.forced_calls                   counter, {call}: calls a forced drain cancelled
//	llmdrain.target.ejections                     counter, {ejection}: a target taken out of rotation
//	llmdrain.target.state                         gauge: 1 for a target's current llmdrain.target.state, 0 for the others it was in
//	llmdrain.client.cost.usd                      counter, {USD}: what the answers cost, priced by Config.Prices (CallDoneInfo.Cost)
//	llmdrain.client.cost.unknown                  counter, {call}: answers paid for at a cost llmdrain does not know (no price, no usage)
//	llmdrain.client.budget.refusals               counter, {call}: calls refused by Config.MaxCost (ErrBudgetExceeded), nothing sent
//
// The GenAI instruments carry gen_ai.operation.name, gen_ai.provider.name,
// gen_ai.request.model, gen_ai.response.model (when the answer named one),
// server.address and server.port (the target's host and port) and, on
// gen_ai.client.operation.duration for a call that failed, error.type
// (CallDoneInfo.ErrorType: "429", "timeout", "draining", ...). The
// semantic conventions' recommended bucket boundaries are used. The cost
// counters carry the token usage's attributes (no gen_ai.token.type); a
// cost that is not known is counted as such, never as 0.
package otelmetrics

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/llmdrain/llmdrain"
)

// ScopeName is the instrumentation scope (meter name) of the instruments.
const ScopeName = "github.com/llmdrain/llmdrain/otelmetrics"

// DefaultProviderName is gen_ai.provider.name unless WithProviderName says
// otherwise: llmdrain speaks the OpenAI API.
const DefaultProviderName = "openai"

// Bucket boundaries the GenAI semantic conventions recommend.
var (
	// DurationBuckets, in seconds, for gen_ai.client.operation.duration
	// and gen_ai.client.operation.time_to_first_chunk.
	DurationBuckets = []float64{0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92}
	// TokenBuckets for gen_ai.client.token.usage.
	TokenBuckets = []float64{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864}
)

// waitBuckets, in seconds, span a backoff of milliseconds to a server's
// Retry-After of a minute.
var waitBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// drainBuckets, in seconds: a drain lasts from nothing to its timeout, a
// minute or a few.
var drainBuckets = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300}

// Attribute keys of llmdrain's own instruments; the GenAI ones are the
// semantic conventions'.
const (
	AttemptOutcomeKey = attribute.Key("llmdrain.attempt.outcome")
	AttemptReasonKey  = attribute.Key("llmdrain.attempt.reason")
	RetryReasonKey    = attribute.Key("llmdrain.retry.reason")
	WaitReasonKey     = attribute.Key("llmdrain.wait.reason")
	DrainForcedKey    = attribute.Key("llmdrain.drain.forced")
	TargetStateKey    = attribute.Key("llmdrain.target.state")
)

const (
	operationNameKey = attribute.Key("gen_ai.operation.name")
	providerNameKey  = attribute.Key("gen_ai.provider.name")
	requestModelKey  = attribute.Key("gen_ai.request.model")
	responseModelKey = attribute.Key("gen_ai.response.model")
	tokenTypeKey     = attribute.Key("gen_ai.token.type")
	serverAddressKey = attribute.Key("server.address")
	serverPortKey    = attribute.Key("server.port")
	errorTypeKey     = attribute.Key("error.type")
)

// Option configures New.
type Option func(*options)

type options struct {
	provider string
}

// WithProviderName sets gen_ai.provider.name, the GenAI provider the
// client talks to, such as "openai", "azure.ai.openai" or "deepseek"
// (DefaultProviderName when unset). An empty name is an error.
func WithProviderName(name string) Option {
	return func(o *options) { o.provider = name }
}

// ErrEmptyProviderName is returned by New for WithProviderName("").
var ErrEmptyProviderName = errors.New("otelmetrics: WithProviderName: empty provider name")

// New creates the instruments on a meter of mp (otel.GetMeterProvider()
// when nil) and returns the Hooks that record them, for Config.Hooks. The
// Hooks may be shared by several clients. Recording never blocks and
// allocates only for an attribute combination not seen before, or, once
// MaxCachedSets combinations have been, for every one not among them.
func New(mp metric.MeterProvider, opts ...Option) (*llmdrain.Hooks, error) {
	r, err := newHooks(mp, MaxCachedSets, opts...)
	if err != nil {
		return nil, err
	}
	return r.hooks(), nil
}

// MaxCachedSets bounds the attribute sets a Hooks keeps, separately for
// calls (one per combination of operation, models, target and error type)
// and for the rest (attempts, retries, waits, targets, drains). Each
// measurement would otherwise build its set, sorting and hashing the
// attributes; a combination past the bound still does, so that a model
// name or an error type of unbounded variety cannot grow the memory
// without bound, and is recorded all the same.
const MaxCachedSets = 1024

func newHooks(mp metric.MeterProvider, maxCached int, opts ...Option) (*recorder, error) {
	o := options{provider: DefaultProviderName}
	for _, opt := range opts {
		opt(&o)
	}
	if o.provider == "" {
		return nil, ErrEmptyProviderName
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return newRecorder(mp.Meter(ScopeName), o, maxCached)
}

func (r *recorder) hooks() *llmdrain.Hooks {
	return &llmdrain.Hooks{
		CallStart:    r.callStart,
		CallDone:     r.callDone,
		AttemptDone:  r.attemptDone,
		Waited:       r.waited,
		TargetChange: r.targetChange,
		DrainDone:    r.drainDone,
	}
}

// recorder holds the instruments and caches of attribute sets, so that a
// call records with no allocation once its combination has been seen. The
// OpenTelemetry SDK still walks a set's attributes at each measurement
// (to normalise map values): that, not the cache, is most of what
// recording costs.
type recorder struct {
	provider attribute.KeyValue

	duration    metric.Float64Histogram
	tokens      metric.Int64Histogram
	firstChunk  metric.Float64Histogram
	inFlight    metric.Int64UpDownCounter
	attempts    metric.Int64Counter
	retries     metric.Int64Counter
	waits       metric.Float64Histogram
	drains      metric.Float64Histogram
	forced      metric.Int64Counter
	ejections   metric.Int64Counter
	targetState metric.Int64Gauge
	cost        metric.Float64Counter
	costUnknown metric.Int64Counter
	refusals    metric.Int64Counter

	noAttrs *attrs

	calls cache[callKey, *callAttrs]
	other cache[otherKey, *attrs]
}

// cache maps attribute combinations to their ready-made sets, up to max
// entries. A read, nearly all of its use, is one lookup in an immutable
// map: no lock, no write to memory shared by the goroutines recording (a
// mutex's reader count would be one on every call). A store copies the
// map; there are at most max of them.
type cache[K comparable, V any] struct {
	m   atomic.Pointer[map[K]V]
	mu  sync.Mutex // serialises stores
	max int
}

func (c *cache[K, V]) load(k K) (V, bool) {
	if m := c.m.Load(); m != nil {
		v, ok := (*m)[k]
		return v, ok
	}
	var zero V
	return zero, false
}

// store keeps v for k unless the cache is full, and returns the value kept
// for k: v, or the one another goroutine stored first.
func (c *cache[K, V]) store(k K, v V) V {
	c.mu.Lock()
	defer c.mu.Unlock()
	var old map[K]V
	if m := c.m.Load(); m != nil {
		old = *m
	}
	if prev, ok := old[k]; ok {
		return prev
	}
	if len(old) >= c.max {
		return v
	}
	m := make(map[K]V, len(old)+1)
	for ok, ov := range old {
		m[ok] = ov
	}
	m[k] = v
	c.m.Store(&m)
	return v
}

func newRecorder(m metric.Meter, o options, maxCached int) (*recorder, error) {
	r := &recorder{
		provider: providerNameKey.String(o.provider),
		noAttrs:  newAttrs(),
	}
	r.calls.max, r.other.max = maxCached, maxCached
	var errs []error
	check := func(err error) {
		errs = append(errs, err)
	}
	var err error
	r.duration, err = m.Float64Histogram("gen_ai.client.operation.duration", metric.WithUnit("s"),
		metric.WithDescription("GenAI operation duration."), metric.WithExplicitBucketBoundaries(DurationBuckets...))
	check(err)
	r.tokens, err = m.Int64Histogram("gen_ai.client.token.usage", metric.WithUnit("{token}"),
		metric.WithDescription("Number of input and output tokens used."), metric.WithExplicitBucketBoundaries(TokenBuckets...))
	check(err)
	r.firstChunk, err = m.Float64Histogram("gen_ai.client.operation.time_to_first_chunk", metric.WithUnit("s"),
		metric.WithDescription("Time to receive the first chunk of a streamed answer, from the request's start."),
		metric.WithExplicitBucketBoundaries(DurationBuckets...))
	check(err)
	r.inFlight, err = m.Int64UpDownCounter("llmdrain.client.calls.in_flight", metric.WithUnit("{call}"),
		metric.WithDescription("Calls started and not yet done, streams until their body is."))
	check(err)
	r.attempts, err = m.Int64Counter("llmdrain.client.attempts", metric.WithUnit("{attempt}"),
		metric.WithDescription("HTTP attempts of calls, by how the transport judged them."))
	check(err)
	r.retries, err = m.Int64Counter("llmdrain.client.retries", metric.WithUnit("{retry}"),
		metric.WithDescription("Attempts followed by another one, by why."))
	check(err)
	r.waits, err = m.Float64Histogram("llmdrain.client.wait.duration", metric.WithUnit("s"),
		metric.WithDescription("Waits of calls: backoff, a server's Retry-After, a concurrency slot, pacing."),
		metric.WithExplicitBucketBoundaries(waitBuckets...))
	check(err)
	r.drains, err = m.Float64Histogram("llmdrain.drain.duration", metric.WithUnit("s"),
		metric.WithDescription("Drains, from their start to their verdict."), metric.WithExplicitBucketBoundaries(drainBuckets...))
	check(err)
	r.forced, err = m.Int64Counter("llmdrain.drain.forced_calls", metric.WithUnit("{call}"),
		metric.WithDescription("Calls a drain cancelled at its deadline."))
	check(err)
	r.ejections, err = m.Int64Counter("llmdrain.target.ejections", metric.WithUnit("{ejection}"),
		metric.WithDescription("Targets taken out of rotation by their breaker."))
	check(err)
	r.targetState, err = m.Int64Gauge("llmdrain.target.state",
		metric.WithDescription("1 for the state a target is in (healthy, ejected, probing), 0 for the states it left."))
	check(err)
	r.cost, err = m.Float64Counter("llmdrain.client.cost.usd", metric.WithUnit("{USD}"),
		metric.WithDescription("What the answers cost, in US dollars, priced by the client's price table."))
	check(err)
	r.costUnknown, err = m.Int64Counter("llmdrain.client.cost.unknown", metric.WithUnit("{call}"),
		metric.WithDescription("Answers paid for at a cost not known: a model without a price, or no usage reported."))
	check(err)
	r.refusals, err = m.Int64Counter("llmdrain.client.budget.refusals", metric.WithUnit("{call}"),
		metric.WithDescription("Calls refused, nothing sent, because their worst-case cost did not fit in the client's MaxCost."))
	check(err)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("otelmetrics: creating the instruments: %w", err)
	}
	return r, nil
}

// attrs is one attribute set as ready-made options for Add and Record.
type attrs struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

// newAttrs makes the options of a set of kvs, which it leaves alone.
func newAttrs(kvs ...attribute.KeyValue) *attrs {
	o := metric.WithAttributeSet(attribute.NewSet(slices.Clone(kvs)...))
	return &attrs{add: []metric.AddOption{o}, record: []metric.RecordOption{o}}
}

// with is kvs and more, in a slice of its own.
func with(kvs []attribute.KeyValue, more ...attribute.KeyValue) []attribute.KeyValue {
	return append(slices.Clip(kvs), more...)
}

// callKey is what a call's attributes are made of: startTarget is the
// target at its start, for the in-flight count, target the one that
// answered, for the rest.
type callKey struct {
	operation, requestModel, responseModel, startTarget, target, errorType string
}

// callAttrs are the attribute sets of calls sharing a callKey: the
// duration's (with error.type), the in-flight count's (what is known at
// the start only), the token usage's, one per token type, and the cost's
// (the token usage's without a type).
type callAttrs struct {
	duration, start, input, output, cost *attrs
}

func (r *recorder) callAttrs(k callKey) *callAttrs {
	if a, ok := r.calls.load(k); ok {
		return a
	}
	start := []attribute.KeyValue{operationNameKey.String(k.operation), r.provider}
	if k.requestModel != "" {
		start = append(start, requestModelKey.String(k.requestModel))
	}
	done := with(start, server(k.target)...)
	start = append(start, server(k.startTarget)...)
	if k.responseModel != "" {
		done = with(done, responseModelKey.String(k.responseModel))
	}
	errorType := done
	if k.errorType != "" {
		errorType = with(done, errorTypeKey.String(k.errorType))
	}
	a := &callAttrs{
		start:    newAttrs(start...),
		duration: newAttrs(errorType...),
		input:    newAttrs(with(done, tokenTypeKey.String("input"))...),
		output:   newAttrs(with(done, tokenTypeKey.String("output"))...),
		cost:     newAttrs(done...),
	}
	return r.calls.store(k, a)
}

// otherKey is what the attributes of attempts, waits and targets are made
// of: the target and up to two values of llmdrain's keys.
type otherKey struct {
	kind   int
	target string
	a, b   string
}

const (
	kindAttempt = iota
	kindRetry
	kindWait
	kindTarget
	kindTargetState
	kindDrain
)

func (r *recorder) otherAttrs(k otherKey) *attrs {
	if a, ok := r.other.load(k); ok {
		return a
	}
	kvs := server(k.target)
	switch k.kind {
	case kindAttempt:
		kvs = append(kvs, AttemptOutcomeKey.String(k.a))
		if k.b != "" {
			kvs = append(kvs, AttemptReasonKey.String(k.b))
		}
	case kindRetry:
		kvs = append(kvs, RetryReasonKey.String(k.a))
	case kindWait:
		kvs = append(kvs, WaitReasonKey.String(k.a))
	case kindTargetState:
		kvs = append(kvs, TargetStateKey.String(k.a))
	case kindDrain:
		kvs = append(kvs, DrainForcedKey.Bool(k.a == "true"))
	}
	return r.other.store(k, newAttrs(kvs...))
}

// server is server.address and server.port of a target's base URL; none
// for "" or a URL without a host.
func server(target string) []attribute.KeyValue {
	if target == "" {
		return nil
	}
	u, err := url.Parse(target)
	if err != nil || u.Hostname() == "" {
		return nil
	}
	kvs := []attribute.KeyValue{serverAddressKey.String(u.Hostname())}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		port = map[string]int{"http": 80, "https": 443}[u.Scheme]
	}
	if port > 0 {
		kvs = append(kvs, serverPortKey.Int(port))
	}
	return kvs
}

// Hooks get no context; the instruments need none.
var bg = context.Background()

func (r *recorder) callStart(i llmdrain.CallStartInfo) {
	a := r.callAttrs(callKey{operation: i.Operation, requestModel: i.Model, startTarget: i.Target, target: i.Target})
	r.inFlight.Add(bg, 1, a.start.add...)
}

func (r *recorder) callDone(i llmdrain.CallDoneInfo) {
	start := i.CallStartInfo
	target := i.Target
	if target == "" {
		target = start.Target
	}
	a := r.callAttrs(callKey{operation: start.Operation, requestModel: start.Model, responseModel: i.ResponseModel,
		startTarget: start.Target, target: target, errorType: i.ErrorType})
	// Undo the start's +1 with the start's attributes.
	r.inFlight.Add(bg, -1, a.start.add...)
	r.duration.Record(bg, i.Duration.Seconds(), a.duration.record...)
	if i.Stream && i.TimeToFirstChunk > 0 {
		r.firstChunk.Record(bg, i.TimeToFirstChunk.Seconds(), a.duration.record...)
	}
	if i.Usage.Known {
		r.tokens.Record(bg, int64(i.Usage.InputTokens), a.input.record...)
		r.tokens.Record(bg, int64(i.Usage.OutputTokens), a.output.record...)
	}
	switch {
	case i.Cost.Unknown:
		r.costUnknown.Add(bg, 1, a.cost.add...)
	case i.Cost.USD > 0:
		r.cost.Add(bg, i.Cost.USD, a.cost.add...)
	}
	if i.ErrorType == budgetExceeded {
		r.refusals.Add(bg, 1, a.cost.add...)
	}
}

// budgetExceeded is CallDoneInfo.ErrorType for ErrBudgetExceeded.
const budgetExceeded = "budget_exceeded"

func (r *recorder) attemptDone(i llmdrain.AttemptInfo) {
	r.attempts.Add(bg, 1, r.otherAttrs(otherKey{kind: kindAttempt, target: i.Target, a: i.Outcome, b: i.Reason}).add...)
	if i.Retry {
		reason := i.Reason
		if reason == "" {
			reason = "other"
		}
		r.retries.Add(bg, 1, r.otherAttrs(otherKey{kind: kindRetry, target: i.Target, a: reason}).add...)
	}
}

func (r *recorder) waited(i llmdrain.WaitInfo) {
	r.waits.Record(bg, i.Duration.Seconds(), r.otherAttrs(otherKey{kind: kindWait, target: i.Target, a: string(i.Reason)}).record...)
}

func (r *recorder) targetChange(i llmdrain.TargetChangeInfo) {
	if i.To == llmdrain.TargetEjected {
		r.ejections.Add(bg, 1, r.otherAttrs(otherKey{kind: kindTarget, target: i.Target}).add...)
	}
	if i.From != "" && i.From != i.To {
		r.targetState.Record(bg, 0, r.otherAttrs(otherKey{kind: kindTargetState, target: i.Target, a: string(i.From)}).record...)
	}
	r.targetState.Record(bg, 1, r.otherAttrs(otherKey{kind: kindTargetState, target: i.Target, a: string(i.To)}).record...)
}

func (r *recorder) drainDone(i llmdrain.DrainDoneInfo) {
	forced := "false"
	if i.Err != nil {
		forced = "true"
	}
	r.drains.Record(bg, i.Duration.Seconds(), r.otherAttrs(otherKey{kind: kindDrain, a: forced}).record...)
	// Added to at every drain, 0 included, so that the series exists from
	// the first drain and a query over it is 0 rather than "no data".
	r.forced.Add(bg, int64(len(i.Forced)), r.noAttrs.add...)
}
