package llmdrain

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// ErrDraining is returned for a call started after a drain began, before
// anything was sent. A Client returns it as it is from every method,
// OpenAI()'s included (no *url.Error naming a URL), so err ==
// ErrDraining, like errors.Is(err, ErrDraining), tells "refused because
// we are shutting down" apart from a failed call.
var ErrDraining = errors.New("llmdrain: draining, call refused")

// ErrForcedShutdown is the context.Cause of every in-flight call cancelled
// because a drain's deadline passed. Errors returned by the client for
// such calls match it with errors.Is. A call cancelled by a second signal
// has the cause ErrSecondSignal, which matches it too.
var ErrForcedShutdown = errors.New("llmdrain: forced shutdown, call cancelled at drain deadline")

// ErrSecondSignal is the cause of the calls a second signal (or a second
// Shutdown.Trigger) cancelled, and of the drains' contexts it ended: the
// operator asked to stop now. It matches ErrForcedShutdown with errors.Is,
// so code that handles a forced shutdown handles it; test for it to tell
// the operator's decision from a drain that ran out of time.
var ErrSecondSignal error = secondSignalError{}

type secondSignalError struct{}

func (secondSignalError) Error() string {
	return "llmdrain: forced shutdown, call cancelled by a second signal"
}

func (secondSignalError) Is(target error) bool { return target == ErrForcedShutdown }

// forceGrace bounds how long Drain waits, after cancelling the stragglers,
// for their callers to observe the cancellation and return. It keeps Drain's
// total time bounded at ctx's deadline plus this grace.
const forceGrace = time.Second

// numShards spreads the registry and count of in-flight calls over several
// locks and cache lines, so that concurrent Begin and done calls rarely
// contend on the same one.
const numShards = 32

// epoch is the origin of the monotonic start times kept for calls in flight.
var epoch = time.Now()

// cacheLine is the padding unit that keeps independently written fields off
// one cache line; 128 covers CPUs that fetch lines in adjacent pairs.
const cacheLine = 128

// A Tracker is a registry of in-flight outbound calls that can be drained:
// once Drain begins it admits no new call, waits for the calls in flight to
// finish, and at its deadline cancels those that have not.
//
// It is to outbound calls what sync.WaitGroup is to goroutines, with
// admission control and a forced phase. A zero Tracker is valid and ready to
// use. A Tracker must not be copied after first use.
type Tracker struct {
	// No word is written by every call: the count of calls in flight is
	// kept per shard, and only a drain adds the shards up.
	draining   atomic.Bool
	forceFlag  atomic.Bool // set before the forced phase cancels calls
	idleClosed atomic.Bool
	deadline   atomic.Int64 // earliest drain deadline in Unix nanoseconds, 0 if none

	// mu guards the lazily created channels and the outcome of a forced
	// drain. It is never taken on the Begin/done fast path.
	mu        sync.Mutex
	idle      chan struct{} // closed when in flight reaches zero while draining
	forced    chan struct{} // closed once a forced drain has its verdict
	forcing   bool
	callCause error // the cause a forced drain cancels calls with; set once, before it marks any
	forcedErr error
	// signalCut are the calls a signal's context cancelled (see
	// CallsCancelledError), and signalCause that context's cause.
	signalCut   []CallInfo
	signalCutN  int
	signalCause error

	// hooks are the Hooks of the clients using the Tracker, told of its
	// drain: started at the first Drain, and done once when its verdict
	// is known. Guarded by mu.
	hooks        []*Hooks
	drainStarted time.Time // zero until the first Drain
	drainDone    bool

	// hook, nil outside tests, is called at the points where a Begin and
	// a forced drain can interleave, so that a test can hold one there.
	hook func(hookPoint)
	_    [cacheLine]byte

	shards [numShards]shard
}

// hookPoint names a point at which Tracker.hook is called.
type hookPoint int

const (
	hookAdmitted   hookPoint = iota // Begin passed the draining check, slot not yet registered
	hookRegistered                  // Begin registered its slot, forceFlag not yet checked
	hookScanned                     // the forced phase cancelled and reported what it found
)

// shard holds a share of the calls in flight, and counts them. The calls
// are kept in reusable slots, so that registering one allocates nothing
// beyond its context and its done func, which closes over the slot's index
// and generation: a second done finds the generation moved on and does
// nothing.
type shard struct {
	n     atomic.Int64 // calls begun here and not done, refused ones for a moment
	mu    sync.Mutex   // guards the rest
	slots []slot
	free  int32  // 1 + index of the first free slot, 0 when none
	seq   uint64 // calls registered here, for IDs
	_     [cacheLine - 56]byte
}

// slot is one call in flight (cancel != nil) or a free slot.
type slot struct {
	gen      uint64 // bumped each time the slot is released
	cancel   context.CancelCauseFunc
	ctx      context.Context // the call's, to tell at done whether a signal cut it
	id       uint64
	label    string
	started  time.Duration // since epoch, on the monotonic clock
	nextFree int32         // while free: like shard.free, the next free slot
	reported bool          // cancelled and named by a forced drain
}

// NewTracker returns a new, empty Tracker. It is equivalent to new(Tracker).
func NewTracker() *Tracker { return new(Tracker) }

// Begin registers a call. It returns a context derived from ctx that is
// cancelled with cause ErrForcedShutdown if a drain's deadline passes while
// the call is in flight, and a done function that the caller must call when
// the call has finished (including when it failed). done is idempotent and
// safe to call from any goroutine; it also releases the derived context's
// resources, so the context must not be used after done.
//
// After a drain has begun, Begin registers nothing and returns ctx, a no-op
// done and ErrDraining. A Begin that races with the start of a drain is
// either admitted, and then waited for (or, if the drain is forced, cancelled
// and named in its *ForcedDrainError), or refused with ErrDraining: never
// cancelled without being named.
func (t *Tracker) Begin(ctx context.Context) (context.Context, func(), error) {
	cctx, _, tk, err := t.begin(ctx, "")
	if err != nil {
		return cctx, func() {}, err
	}
	return cctx, func() { t.finish(tk) }, nil
}

// ticket names a registered call's slot: finish(tk) is its done. A value,
// not a closure, so that the transport's calls register without
// allocating one.
type ticket struct {
	si  uint32
	i   int32
	gen uint64
}

// begin is Begin with a label used to name the call if a drain is forced,
// the context's cancel (for the transport's timers, which end an attempt
// by cancelling it; see renew) and the call's done as a ticket for
// finish.
func (t *Tracker) begin(ctx context.Context, label string) (context.Context, context.CancelCauseFunc, ticket, error) {
	// Any shard will do: a random one spreads the calls over the locks
	// without a counter that every call would write.
	si := rand.Uint32() % numShards
	s := &t.shards[si]
	// Count first, then check; Drain sets draining first, then adds the
	// counts up. With done's decrement-then-check this guarantees that
	// Drain either sees the call or the call sees the drain, without a
	// word shared by all calls.
	s.n.Add(1)
	if t.draining.Load() {
		t.release(s)
		return ctx, nil, ticket{}, ErrDraining
	}
	if t.hook != nil {
		t.hook(hookAdmitted)
	}
	cctx, cancel := context.WithCancelCause(ctx)
	// time.Now reads two clocks, which costs as much as the rest of Begin
	// on some machines; the monotonic one is enough here, and cancelAll
	// rebuilds the wall time of the few calls it reports.
	now := time.Since(epoch)
	s.mu.Lock()
	i := s.free - 1
	if i >= 0 {
		s.free = s.slots[i].nextFree
	} else {
		s.slots = append(s.slots, slot{})
		i = int32(len(s.slots) - 1)
	}
	sl := &s.slots[i]
	s.seq++
	sl.cancel, sl.ctx, sl.id, sl.label, sl.started = cancel, cctx, s.seq*numShards+uint64(si), label, now
	gen := sl.gen
	s.mu.Unlock()
	if t.hook != nil {
		t.hook(hookRegistered)
	}
	// A forced phase that scanned this shard before the insert cannot have
	// seen the call; it set forceFlag before scanning, so the call sees it.
	// Whether it saw the call is settled under the shard lock: a call it
	// reported is one of its stragglers, already cancelled; one it missed
	// has sent nothing yet and is refused, so that the verdict names every
	// call the drain cancelled, and only those.
	if t.forceFlag.Load() && !t.keepForced(s, i, gen) {
		cancel(ErrDraining)
		t.release(s)
		return ctx, nil, ticket{}, ErrDraining
	}
	return cctx, cancel, ticket{si, i, gen}, nil
}

// renew registers ctx, with its cancel, as the context of the call tk
// registered, in place of the one begin (or an earlier renew) returned,
// which a timeout of one attempt has cancelled: the call goes on in ctx.
// If a forced drain already named the call, ctx is cancelled at once with
// the drain's cause, as the old one would have been.
func (t *Tracker) renew(tk ticket, ctx context.Context, cancel context.CancelCauseFunc) {
	s := &t.shards[tk.si]
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := &s.slots[tk.i]
	if sl.gen != tk.gen {
		cancel(context.Canceled) // done already
		return
	}
	sl.ctx, sl.cancel = ctx, cancel
	if sl.reported {
		cancel(t.callCause)
	}
}

// keepForced settles, for a call that registered slot i of s (generation
// gen) and then saw a forced drain, whether that drain reported the call.
// If it did, the call stays registered, to be done by its caller; if not,
// keepForced frees the slot and the caller refuses the call. The slot is
// still the call's: only its done, not yet returned, could free it.
func (t *Tracker) keepForced(s *shard, i int32, gen uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := &s.slots[i]
	if sl.reported {
		return true
	}
	sl.gen, sl.cancel, sl.ctx, sl.label, sl.nextFree = gen+1, nil, nil, "", s.free
	s.free = i + 1
	return false
}

// finish is the done of the call tk registered.
func (t *Tracker) finish(tk ticket) {
	si, i, gen := tk.si, tk.i, tk.gen
	s := &t.shards[si]
	s.mu.Lock()
	sl := &s.slots[i]
	if sl.gen != gen {
		s.mu.Unlock()
		return // done already
	}
	cancel := sl.cancel
	var (
		cut      CallInfo
		cutCause error
	)
	if err := sl.ctx.Err(); err != nil && !sl.reported {
		// Ended by its caller's context: a signal's, the mistake a drain
		// must not pass over in silence (see CallsCancelledError)?
		if cause := context.Cause(sl.ctx); isSignalCause(cause) {
			cut, cutCause = CallInfo{ID: sl.id, Label: sl.label, Started: time.Now().Add(sl.started - time.Since(epoch))}, cause
		}
	}
	// Field by field: assigning a whole slot costs a typed copy.
	sl.gen, sl.cancel, sl.ctx, sl.label, sl.nextFree, sl.reported = gen+1, nil, nil, "", s.free, false
	s.free = i + 1
	s.mu.Unlock()
	if cutCause != nil {
		t.noteSignalCut(cut, cutCause)
	}
	cancel(context.Canceled)
	t.release(s)
}

// isSignalCause reports whether cause is that of a context a signal
// cancelled: signal.NotifyContext's (Go 1.26 and later give it a cause of
// the os/signal package's, "interrupt signal received").
func isSignalCause(cause error) bool {
	if cause == nil {
		return false
	}
	return reflect.TypeOf(cause).PkgPath() == "os/signal"
}

// maxSignalCut bounds the calls a CallsCancelledError names.
const maxSignalCut = 100

// noteSignalCut records a call that a signal's context cancelled.
func (t *Tracker) noteSignalCut(c CallInfo, cause error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.signalCutN++
	if len(t.signalCut) < maxSignalCut {
		t.signalCut = append(t.signalCut, c)
	}
	if t.signalCause == nil {
		t.signalCause = cause
	}
}

// release takes one call off s's count and, when it was the last one in
// flight during a drain, wakes the drainers. Of the calls ending together,
// the last to decrement sees every other decrement in its sum.
func (t *Tracker) release(s *shard) {
	s.n.Add(-1)
	if t.draining.Load() && t.InFlight() == 0 {
		t.signalIdle()
	}
}

func (t *Tracker) signalIdle() {
	if t.idleClosed.Load() {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	if !t.idleClosed.Swap(true) {
		close(t.idle)
	}
}

// InFlight reports how many calls have begun and not yet called done.
func (t *Tracker) InFlight() int {
	var n int64
	for i := range t.shards {
		n += t.shards[i].n.Load()
	}
	return int(n)
}

// Draining reports whether a drain has begun. Once true it stays true.
func (t *Tracker) Draining() bool { return t.draining.Load() }

// drainDeadline returns the deadline of the drain in progress, if it has one.
// The retrying transport uses it so that no backoff wait is started that
// would end after the calls are going to be cancelled anyway.
func (t *Tracker) drainDeadline() (time.Time, bool) {
	if n := t.deadline.Load(); n != 0 {
		return time.Unix(0, n), true
	}
	return time.Time{}, false
}

// Drain stops admitting calls at once and waits for the calls in flight.
//
// It returns nil as soon as the last in-flight call is done: completion is
// signalled by that call's done, there is no polling. If ctx ends first,
// Drain cancels the context of every call still in flight with cause
// ErrForcedShutdown, waits at most one second for them to call done, and
// returns a *ForcedDrainError that wraps context.Cause(ctx) (so
// errors.Is(err, context.DeadlineExceeded) works when ctx timed out) and
// names exactly the calls it cancelled (their cause is ErrSecondSignal when
// ctx's cause is it). A Begin racing with the forced phase is either one of
// those or refused with ErrDraining, having sent nothing; if no call was
// cancelled, Drain returns nil, unless a signal's context had cancelled
// calls before they could drain: then it returns a *CallsCancelledError
// naming them, so that a shutdown that lost calls never reports success.
//
// Drain may be called concurrently and repeatedly; all calls agree: once any
// Drain has forced cancellation, every Drain returns that same error;
// otherwise each returns nil when nothing is in flight. Draining is final: a
// drained Tracker never admits calls again.
func (t *Tracker) Drain(ctx context.Context) error {
	err := t.drain(ctx)
	t.drainEnded(err)
	return err
}

// addHooks registers h, a client's, to be told of drains; once per Hooks.
func (t *Tracker) addHooks(h *Hooks) {
	if h == nil || h.DrainStart == nil && h.DrainDone == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !slices.Contains(t.hooks, h) {
		t.hooks = append(t.hooks, h)
	}
}

// drainBegan tells DrainStart to the registered Hooks if this is the
// first drain; draining is already set, so the count is of the calls it
// waits for.
func (t *Tracker) drainBegan() {
	t.mu.Lock()
	if !t.drainStarted.IsZero() {
		t.mu.Unlock()
		return
	}
	t.drainStarted = time.Now()
	hooks := t.hooks
	t.mu.Unlock()
	if len(hooks) == 0 {
		return
	}
	info := DrainStartInfo{InFlight: t.InFlight()}
	for _, h := range hooks {
		if h.DrainStart != nil {
			h.DrainStart(info)
		}
	}
}

// drainEnded tells DrainDone to the registered Hooks, once, with err, the
// verdict every Drain returns.
func (t *Tracker) drainEnded(err error) {
	t.mu.Lock()
	if t.drainDone || len(t.hooks) == 0 {
		t.drainDone = true
		t.mu.Unlock()
		return
	}
	t.drainDone = true
	hooks, started := t.hooks, t.drainStarted
	t.mu.Unlock()
	info := DrainDoneInfo{Duration: time.Since(started), Err: err}
	var fe *ForcedDrainError
	errors.As(err, &fe)
	for _, h := range hooks {
		if h.DrainDone != nil {
			if fe != nil {
				info.Forced = slices.Clone(fe.Stragglers) // each hook's to keep
			}
			h.DrainDone(info)
		}
	}
}

// drain is Drain but for its hooks.
func (t *Tracker) drain(ctx context.Context) error {
	t.mu.Lock()
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	if t.forced == nil {
		t.forced = make(chan struct{})
	}
	idle, forced := t.idle, t.forced
	if d, ok := ctx.Deadline(); ok {
		if cur := t.deadline.Load(); cur == 0 || d.UnixNano() < cur {
			t.deadline.Store(d.UnixNano())
		}
	}
	t.mu.Unlock()

	t.draining.Store(true)
	t.drainBegan()
	if t.InFlight() == 0 {
		t.signalIdle()
	}

	select {
	case <-idle:
		return t.outcome()
	case <-forced:
		return t.outcome()
	case <-ctx.Done():
	}
	// Prefer a clean finish that raced with the deadline.
	select {
	case <-idle:
		return t.outcome()
	default:
	}
	t.force(context.Cause(ctx), idle)
	return t.outcome()
}

// outcome is the agreed result of every Drain: the forced error if a drain
// was forced, nil otherwise.
func (t *Tracker) outcome() error {
	t.mu.Lock()
	forcing, forced := t.forcing, t.forced
	t.mu.Unlock()
	if forcing {
		<-forced // closed after forcedErr is written
		if t.forcedErr != nil {
			return t.forcedErr
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.signalCut) > 0 {
		return &CallsCancelledError{Cause: t.signalCause, Calls: slices.Clone(t.signalCut), N: t.signalCutN}
	}
	return nil
}

// force cancels every call in flight and waits the grace for them. Only the
// first caller does the work; later ones wait for its verdict via outcome.
func (t *Tracker) force(cause error, idle <-chan struct{}) {
	t.mu.Lock()
	if t.forcing {
		t.mu.Unlock()
		return
	}
	t.forcing = true
	t.mu.Unlock()

	t.forceFlag.Store(true)
	// The calls' cause is ErrForcedShutdown, or the more precise one the
	// drain was given that matches it (ErrSecondSignal).
	callCause := ErrForcedShutdown
	if errors.Is(cause, ErrForcedShutdown) {
		callCause = cause
	}
	t.callCause = callCause // before any slot is marked reported: renew reads it then
	stragglers := t.cancelAll(callCause)
	if t.hook != nil {
		t.hook(hookScanned)
	}
	timer := time.NewTimer(forceGrace)
	select {
	case <-idle:
	case <-timer.C:
	}
	timer.Stop()

	// With no stragglers the deadline merely raced the last done: nothing
	// was cancelled, so the verdict is a clean drain. Only stragglers count
	// as unfinished: InFlight would also count, for a moment, a Begin on
	// its way to being refused.
	var err error
	if len(stragglers) > 0 {
		err = &ForcedDrainError{Cause: cause, Stragglers: stragglers, Unfinished: t.unfinished()}
	}
	t.mu.Lock()
	t.forcedErr = err
	close(t.forced)
	t.mu.Unlock()
}

// cancelAll cancels every registered call, marks it reported and describes
// them, oldest first. The mark, under the shard lock, is what a Begin racing
// with it consults to know whether it is named (see begin).
func (t *Tracker) cancelAll(cause error) []CallInfo {
	var infos []CallInfo
	now, mono := time.Now(), time.Since(epoch)
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for j := range s.slots {
			if sl := &s.slots[j]; sl.cancel != nil {
				sl.reported = true
				sl.cancel(cause)
				infos = append(infos, CallInfo{ID: sl.id, Label: sl.label, Started: now.Add(sl.started - mono)})
			}
		}
		s.mu.Unlock()
	}
	sort.Slice(infos, func(i, j int) bool {
		if d := infos[i].Started.Compare(infos[j].Started); d != 0 {
			return d < 0
		}
		return infos[i].ID < infos[j].ID
	})
	return infos
}

// unfinished counts the calls reported by cancelAll that have not called
// done yet.
func (t *Tracker) unfinished() int {
	n := 0
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for j := range s.slots {
			if s.slots[j].reported {
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}

// CallInfo describes a call that was still in flight when a drain was forced.
type CallInfo struct {
	ID      uint64    // number given by Begin, unique per Tracker
	Label   string    // for calls made through a Client, "METHOD /path"; empty for bare Begin
	Started time.Time // when Begin registered the call
}

// String returns the label, or "call #ID" for an unlabelled call.
func (c CallInfo) String() string {
	if c.Label != "" {
		return c.Label
	}
	return fmt.Sprintf("call #%d", c.ID)
}

// ForcedDrainError is returned by Drain when its context ended before every
// call finished. It wraps the context's cause.
type ForcedDrainError struct {
	// Cause is context.Cause of the drain's context, usually
	// context.DeadlineExceeded, or ErrForcedShutdown after a second signal.
	Cause error
	// Stragglers are the calls that were in flight at the deadline and were
	// cancelled, oldest first.
	Stragglers []CallInfo
	// Unfinished is how many of the Stragglers had still not called done
	// when the grace after cancellation ended; normally 0.
	Unfinished int
}

// Error says how many calls were cancelled and names up to five of them.
func (e *ForcedDrainError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "llmdrain: drain forced (%v) with %d call", e.Cause, len(e.Stragglers))
	if len(e.Stragglers) != 1 {
		b.WriteString("s")
	}
	b.WriteString(" in flight")
	writeCalls(&b, e.Stragglers, len(e.Stragglers))
	if e.Unfinished > 0 {
		fmt.Fprintf(&b, "; %d still running after cancellation", e.Unfinished)
	}
	return b.String()
}

// Unwrap returns Cause.
func (e *ForcedDrainError) Unwrap() error { return e.Cause }

// writeCalls names the first five of calls after ": ", and says how many
// more of total there were.
func writeCalls(b *strings.Builder, calls []CallInfo, total int) {
	for i, c := range calls {
		if i == 5 {
			fmt.Fprintf(b, ", and %d more", total-i)
			return
		}
		sep := ", "
		if i == 0 {
			sep = ": "
		}
		fmt.Fprintf(b, "%s%s", sep, c)
	}
}

// CallsCancelledError is returned by Drain (so Client.Shutdown) when no
// call was left to wait for because a signal had cancelled calls first:
// their context came from signal.NotifyContext, which cancels it at the
// very signal the drain is answering. The drain had nothing to wait for,
// but those calls were lost, so it does not report success. Give such
// calls a context that outlives the signal (context.WithoutCancel, or
// context.Background, bounded by a timeout of its own) and let the drain
// decide when to give up; see the README's "Adopting it in an existing
// service".
//
// It is recognised from the context's cause, which signal.NotifyContext
// sets from Go 1.26 on; built with an older Go, such a call is not
// noticed. A drain that was also forced returns its *ForcedDrainError.
type CallsCancelledError struct {
	// Cause is the signal context's cause, such as "terminated signal
	// received".
	Cause error
	// Calls are the calls it cancelled, in the order they ended, the
	// first 100 of them.
	Calls []CallInfo
	// N is how many calls it cancelled.
	N int
}

// Error says how many calls the signal cut and names up to five.
func (e *CallsCancelledError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "llmdrain: %d call", e.N)
	if e.N != 1 {
		b.WriteString("s")
	}
	fmt.Fprintf(&b, " cancelled by a signal's context (%v) instead of drained", e.Cause)
	writeCalls(&b, e.Calls, e.N)
	b.WriteString("; give them a context that outlives the signal, such as context.WithoutCancel(ctx)")
	return b.String()
}

// Unwrap returns Cause, which matches context.Canceled.
func (e *CallsCancelledError) Unwrap() error { return e.Cause }
