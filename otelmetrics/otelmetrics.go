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
// The instruments, recorded from the hooks. The two counted on every call,
// in flight and attempts, are observable: counted in atomics and read when
// a reader collects: an atomic add per call, where a synchronous
// measurement costs the SDK some 3,000 instructions, most of them walking
// the attribute set. The others are synchronous:
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
// MaxCachedSets combinations have been, for every one not among them. The
// observable instruments (calls in flight, attempts) keep one count per
// attribute set, up to 2000 each, the SDK's default cardinality limit;
// past them they count in one series marked otel.metric.overflow=true, as
// the SDK does past its limit.
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
	inFlight    metric.Int64ObservableUpDownCounter
	attempts    metric.Int64ObservableCounter
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

	// The observable instruments' counts, by attribute set.
	inFlightN counts[startKey]
	attemptN  counts[otherKey]
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
// for k: v, or the one another goroutine stored first; false when the
// cache is full and v was not kept.
func (c *cache[K, V]) store(k K, v V) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var old map[K]V
	if m := c.m.Load(); m != nil {
		old = *m
	}
	if prev, ok := old[k]; ok {
		return prev, true
	}
	if len(old) >= c.max {
		return v, false
	}
	m := make(map[K]V, len(old)+1)
	for ok, ov := range old {
		m[ok] = ov
	}
	m[k] = v
	c.m.Store(&m)
	return v, true
}

// counts are the counts of an observable instrument by attribute set,
// counted with an atomic add and read when the instrument is collected:
// a synchronous instrument's measurement costs the SDK a walk over its
// set's attributes on every call. A set is added at its first count, up
// to max sets; past them the counts go to one set, otel.metric.overflow,
// as the SDK does past its cardinality limit (2000 series by default).
type counts[K comparable] struct {
	sets     cache[K, *count]
	overflow count
	// overflowed is set at the overflow's first count: from then on it
	// is observed, at 0 too, as the other sets are.
	overflowed atomic.Bool
}

// count is one attribute set's count.
type count struct {
	n    atomic.Int64
	opts []metric.ObserveOption
}

// countsPerInstrument bounds the sets of each observable instrument: the
// SDK's default cardinality limit, so that with the SDK's defaults the
// instrument keeps the series a synchronous one would.
const countsPerInstrument = 2000

// overflowKey marks the series of the counts past the bound, as the SDK
// names its own.
var overflowKey = attribute.Key("otel.metric.overflow")

// init readies c, keeping up to max sets.
func (c *counts[K]) init(max int) {
	c.sets.max = max
	c.overflow.opts = observeOpts(overflowKey.Bool(true))
}

func observeOpts(kvs ...attribute.KeyValue) []metric.ObserveOption {
	return []metric.ObserveOption{metric.WithAttributeSet(attribute.NewSet(slices.Clone(kvs)...))}
}

// of returns k's count, made of the attributes kvs returns if it is new.
func (c *counts[K]) of(k K, kvs func() []attribute.KeyValue) *count {
	if n, ok := c.sets.load(k); ok {
		return n
	}
	n, kept := c.sets.store(k, &count{opts: observeOpts(kvs()...)})
	if !kept {
		c.overflowed.Store(true)
		return &c.overflow
	}
	return n
}

// observe reports every count to o as inst's.
func (c *counts[K]) observe(o metric.Observer, inst metric.Int64Observable) {
	if m := c.sets.m.Load(); m != nil {
		for _, n := range *m {
			o.ObserveInt64(inst, n.n.Load(), n.opts...)
		}
	}
	if c.overflowed.Load() {
		o.ObserveInt64(inst, c.overflow.n.Load(), c.overflow.opts...)
	}
}

func newRecorder(m metric.Meter, o options, maxCached int) (*recorder, error) {
	r := &recorder{
		provider: providerNameKey.String(o.provider),
		noAttrs:  newAttrs(),
	}
	r.calls.max, r.other.max = maxCached, maxCached
	r.inFlightN.init(countsPerInstrument)
	r.attemptN.init(countsPerInstrument)
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
	r.inFlight, err = m.Int64ObservableUpDownCounter("llmdrain.client.calls.in_flight", metric.WithUnit("{call}"),
		metric.WithDescription("Calls started and not yet done, streams until their body is."))
	check(err)
	r.attempts, err = m.Int64ObservableCounter("llmdrain.client.attempts", metric.WithUnit("{attempt}"),
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
	// Never unregistered: like the synchronous instruments, the callback
	// lives as long as the MeterProvider.
	if _, err := m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		r.inFlightN.observe(o, r.inFlight)
		r.attemptN.observe(o, r.attempts)
		return nil
	}, r.inFlight, r.attempts); err != nil {
		return nil, fmt.Errorf("otelmetrics: registering the observable instruments: %w", err)
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

// callKey is what a call's attributes are made of, target the one that
// answered.
type callKey struct {
	operation, requestModel, responseModel, target, errorType string
}

// callAttrs are the attribute sets of calls sharing a callKey: the
// duration's (with error.type), the token usage's, one per token type, and
// the cost's (the token usage's without a type).
type callAttrs struct {
	duration, input, output, cost *attrs
}

// startKey is what the in-flight count's attributes are made of: what is
// known at a call's start.
type startKey struct {
	operation, requestModel, target string
}

// startAttrs are the attributes of calls that start as k says.
func (r *recorder) startAttrs(k startKey) []attribute.KeyValue {
	kvs := []attribute.KeyValue{operationNameKey.String(k.operation), r.provider}
	if k.requestModel != "" {
		kvs = append(kvs, requestModelKey.String(k.requestModel))
	}
	return append(kvs, server(k.target)...)
}

// inFlightOf returns the in-flight count of calls that start as k says.
func (r *recorder) inFlightOf(k startKey) *count {
	return r.inFlightN.of(k, func() []attribute.KeyValue { return r.startAttrs(k) })
}

func (r *recorder) callAttrs(k callKey) *callAttrs {
	if a, ok := r.calls.load(k); ok {
		return a
	}
	done := []attribute.KeyValue{operationNameKey.String(k.operation), r.provider}
	if k.requestModel != "" {
		done = append(done, requestModelKey.String(k.requestModel))
	}
	done = append(done, server(k.target)...)
	if k.responseModel != "" {
		done = with(done, responseModelKey.String(k.responseModel))
	}
	errorType := done
	if k.errorType != "" {
		errorType = with(done, errorTypeKey.String(k.errorType))
	}
	a := &callAttrs{
		duration: newAttrs(errorType...),
		input:    newAttrs(with(done, tokenTypeKey.String("input"))...),
		output:   newAttrs(with(done, tokenTypeKey.String("output"))...),
		cost:     newAttrs(done...),
	}
	a, _ = r.calls.store(k, a)
	return a
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
	a, _ := r.other.store(k, newAttrs(r.otherKVs(k)...))
	return a
}

// otherKVs are the attributes k is made of.
func (r *recorder) otherKVs(k otherKey) []attribute.KeyValue {
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
	return kvs
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
	r.inFlightOf(startKey{i.Operation, i.Model, i.Target}).n.Add(1)
}

func (r *recorder) callDone(i llmdrain.CallDoneInfo) {
	start := i.CallStartInfo
	target := i.Target
	if target == "" {
		target = start.Target
	}
	// Undo the start's +1 with the start's attributes.
	r.inFlightOf(startKey{start.Operation, start.Model, start.Target}).n.Add(-1)
	a := r.callAttrs(callKey{operation: start.Operation, requestModel: start.Model, responseModel: i.ResponseModel,
		target: target, errorType: i.ErrorType})
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
	k := otherKey{kind: kindAttempt, target: i.Target, a: i.Outcome, b: i.Reason}
	r.attemptN.of(k, func() []attribute.KeyValue { return r.otherKVs(k) }).n.Add(1)
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
