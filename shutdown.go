package llmdrain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultShutdownTimeout bounds the drains when Shutdown.Timeout is 0.
const DefaultShutdownTimeout = 30 * time.Second

// Shutdown runs a service's graceful shutdown: it ties the stop signals,
// the readiness probe and the drains of the service's servers and LLM
// clients together, in the spirit of http.Server.Shutdown.
//
// Run waits for the first SIGTERM or SIGINT (or Trigger, or its context
// ending), then:
//
//  1. turns readiness off: ReadyHandler answers 503 from now on, while
//     LiveHandler keeps answering 200, so the orchestrator stops routing
//     new traffic here without restarting the process;
//  2. waits Delay, the preStop role: load balancers that poll readiness
//     need that long to stop sending;
//  3. runs the registered drains one after the other, in registration
//     order (register the inbound http.Server first, then the LLM
//     clients), all under one Timeout, of which a drain registered with
//     RegisterReserved is sure to get its share: the drain before it is
//     forced when only the reserved time is left, and it starts;
//  4. at the Timeout, the drain running is forced (its context ends) and
//     every drain not yet started is started at once with that ended
//     context, so that they force together rather than in turn: servers
//     close their connections, clients cancel their calls with cause
//     ErrForcedShutdown, and the stragglers are reported in Run's error;
//  5. Run waits at most ShutdownGrace after the Timeout for the forced
//     drains to return. A drain still running then is abandoned (left
//     running in its goroutine) and reported as one that would not stop.
//
// A second signal (or Trigger) at any point during steps 2 to 5 forces at
// once: the delay is cut short, every drain's context is cancelled with
// cause ErrSecondSignal (which matches ErrForcedShutdown), the drains not yet started are started, and Run
// returns at most ShutdownGrace later. The stop signals are released
// (signal.Stop) as soon as the shutdown is forced by a second signal or
// Trigger, and in any case when Run returns, so that a further signal has
// its default action: an operator's repeated Ctrl-C always works.
//
// So Run returns at most Delay + Timeout + ShutdownGrace after the first
// signal, and at most ShutdownGrace after a second one, whatever the drains
// do. A drain that panics is reported as that drain's error, and the drains
// after it run as usual.
//
// Nothing is installed at import time: signals are watched only while Run
// runs. The zero value is ready to use; set the fields before calling Run.
// A Shutdown must not be copied after first use.
type Shutdown struct {
	// Delay is waited after readiness turns off, before draining.
	Delay time.Duration
	// Timeout bounds all drains together. 0 means DefaultShutdownTimeout.
	// Run returns at most ShutdownGrace after it.
	Timeout time.Duration
	// Signals start the shutdown; the second one forces it. Nil means
	// SIGTERM and SIGINT.
	Signals []os.Signal
	// Logger receives each step: at INFO the steps of a shutdown that goes
	// as planned, at WARN what forces (a second signal, the Timeout, a
	// drain's share spent), at ERROR what fails (a drain's error, a panic,
	// a drain abandoned, "shutdown: done" with ok=false). Nil means silent.
	Logger *slog.Logger

	mu       sync.Mutex
	drains   []namedDrain
	finished bool          // Run has returned, or is returning: see Register
	added    chan struct{} // signalled by Register while Run runs
	triggers chan struct{}
	stopCh   chan struct{}  // closed when the shutdown begins
	sigCh    chan os.Signal // nil until Notify
	stopping atomic.Bool
	ran      atomic.Bool
}

// ShutdownGrace is how long Shutdown.Run waits, once its Timeout has passed
// or a second signal came, for the forced drains to return. It exceeds the
// one second a forced Tracker.Drain (so Client.Shutdown) gives its
// cancelled calls, so that such a drain's verdict, stragglers named, is
// reported rather than abandoned.
const ShutdownGrace = forceGrace + forceGrace/4

type namedDrain struct {
	name    string
	drain   func(context.Context) error
	reserve time.Duration // its share of the Timeout: see RegisterReserved
}

// Register adds a drain, run after those registered before it. drain must
// return once its work is done, or soon after ctx ends, forcing what is
// left. Client.Shutdown and Tracker.Drain fit as they are.
//
// A drain registered while Run is draining is run too: after the others if
// the Timeout has not passed, at once (forced) if it has. A drain
// registered once Run has finished draining is run at once, in Register,
// with a context already cancelled with cause ErrForcedShutdown (the
// shutdown is over: a client registered then refuses calls from now on,
// and cancels any it has); its error, having nowhere to go, is logged.
func (s *Shutdown) Register(name string, drain func(ctx context.Context) error) {
	s.register(namedDrain{name: name, drain: drain})
}

// RegisterReserved is Register with a share of the Timeout kept for this
// drain: the drains registered before it must be done by Timeout minus the
// reserves of the drains from this one on, or they are forced then (their
// context ends with an error matching context.DeadlineExceeded), and this
// one starts at that point at the latest, with at least reserve to run.
// So a busy inbound server, registered first, cannot spend the whole
// Timeout and leave a background LLM call to be cut the same instant:
//
//	sd.RegisterServer("http", srv)                          // gets Timeout - 20s at most
//	sd.RegisterReserved("llm", 20*time.Second, llm.Shutdown) // gets 20s at least
//
// The total stays bounded by Timeout (and Run's bound by Delay + Timeout +
// ShutdownGrace), so a Kubernetes grace period that covers them still
// does. Reserves that add up to more than the Timeout leave the first
// drains no time at all. A drain that finishes early leaves its time to
// the next: a reserve is a floor, not a slot.
func (s *Shutdown) RegisterReserved(name string, reserve time.Duration, drain func(ctx context.Context) error) {
	s.register(namedDrain{name: name, drain: drain, reserve: max(reserve, 0)})
}

func (s *Shutdown) register(d namedDrain) {
	name := d.name
	s.mu.Lock()
	if !s.finished {
		s.drains = append(s.drains, d)
		added := s.added
		s.mu.Unlock()
		if added != nil {
			select {
			case added <- struct{}{}:
			default: // Run has a wake-up pending already
			}
		}
		return
	}
	s.mu.Unlock()
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(ErrForcedShutdown)
	t := time.Now()
	if err := s.call(ctx, d); err != nil {
		s.logAt(slog.LevelError, "shutdown: drain registered after Run failed", "drain", name, "took", since(t), "error", err)
		return
	}
	s.log("shutdown: drain registered after Run drained", "drain", name, "took", since(t))
}

// RegisterServer adds srv's graceful shutdown as a drain: srv.Shutdown
// stops accepting connections and waits for the handlers in flight; if the
// timeout or a second signal comes first, srv.Close closes every
// connection, which cancels the handlers' request contexts.
func (s *Shutdown) RegisterServer(name string, srv *http.Server) {
	s.Register(name, func(ctx context.Context) error {
		err := srv.Shutdown(ctx)
		if err != nil {
			srv.Close()
		}
		return err
	})
}

// ReadyHandler answers readiness probes: 200 until the shutdown begins,
// 503 from then on.
func (s *Shutdown) ReadyHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if s.stopping.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "shutting down")
			return
		}
		fmt.Fprintln(w, "ok")
	})
}

// LiveHandler answers liveness probes: 200 for as long as the process
// runs, draining included, so the orchestrator does not kill a process
// that is shutting down on purpose.
func (s *Shutdown) LiveHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
}

// ShuttingDown reports whether the shutdown has begun.
func (s *Shutdown) ShuttingDown() bool { return s.stopping.Load() }

// Stopping returns a channel that is closed when the shutdown begins, at
// the first signal, Trigger or end of Run's context, before the delay and
// the drains: the moment to stop taking new work, or to tell the user.
func (s *Shutdown) Stopping() <-chan struct{} { return s.stopChan() }

func (s *Shutdown) stopChan() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopCh == nil {
		s.stopCh = make(chan struct{})
	}
	return s.stopCh
}

// Trigger acts as a signal: the first call starts the shutdown, the second
// forces it. It may be called before or during Run and never blocks; calls
// beyond the second are ignored.
func (s *Shutdown) Trigger() {
	select {
	case s.triggerChan() <- struct{}{}:
	default:
	}
}

func (s *Shutdown) triggerChan() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.triggers == nil {
		s.triggers = make(chan struct{}, 2)
	}
	return s.triggers
}

// Notify starts watching the stop signals now. Call it before serving
// traffic when Run starts later or in another goroutine: until the signals
// are watched they keep their default action, and a SIGTERM arriving in
// that window would kill the process without a drain. Signals received
// before Run are kept for it (two at most, the second forcing). Run calls
// Notify itself; calling it more than once is harmless.
func (s *Shutdown) Notify() { s.notify() }

func (s *Shutdown) notify() chan os.Signal {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sigCh == nil {
		s.sigCh = make(chan os.Signal, 2)
		signal.Notify(s.sigCh, s.signals()...)
	}
	return s.sigCh
}

func (s *Shutdown) signals() []os.Signal {
	if len(s.Signals) == 0 {
		return []os.Signal{syscall.SIGTERM, os.Interrupt}
	}
	return s.Signals
}

// Run watches for the stop signals and, at the first one, performs the
// shutdown sequence described on Shutdown; ctx ending counts as the first
// signal. ctx may be the service's own signal.NotifyContext for the same
// signals: the signal that ends it is counted once, not as a first and a
// second (Go 1.26 and later, whose NotifyContext names its signal). Until Run (or Notify) has started watching them, the stop
// signals keep their default action (a SIGTERM kills the process): call
// Notify before serving traffic if Run comes later.
//
// Run returns at most Delay + Timeout + ShutdownGrace after the first
// signal (at most ShutdownGrace after a second one), whatever the drains
// do. It returns nil when every drain finished within the timeout, and
// otherwise the drains' errors joined, in registration order, each naming
// its drain: the error a drain returned, the value a drain panicked with,
// or that a drain did not return within ShutdownGrace of being forced.
// errors.Is matches ErrSecondSignal (and so ErrForcedShutdown) after a
// second signal and context.DeadlineExceeded after the timeout. Run is meant to be called
// once: a second call returns an error at once.
func (s *Shutdown) Run(ctx context.Context) error {
	if s.ran.Swap(true) {
		return errors.New("llmdrain: Shutdown.Run called twice")
	}
	ch := s.notify()
	defer signal.Stop(ch)
	triggers := s.triggerChan()
	s.log("shutdown: waiting for a signal", "signals", fmt.Sprint(s.signals()))

	select {
	case sig := <-ch:
		s.log("shutdown: signal received", "signal", sig.String())
	case <-triggers:
		s.log("shutdown: triggered")
	case <-ctx.Done():
		s.log("shutdown: context ended", "cause", context.Cause(ctx))
		s.sameSignal(ch, context.Cause(ctx))
	}
	start := time.Now()
	s.stopping.Store(true)
	close(s.stopChan())

	// A second signal cancels everything with ErrSecondSignal, and gives
	// the signals back their default action.
	forceCtx, force := context.WithCancelCause(context.Background())
	watchDone := make(chan struct{})
	defer func() {
		force(nil) // ends the watcher if no second signal came
		<-watchDone
	}()
	go func() {
		defer close(watchDone)
		select {
		case sig := <-ch:
			s.logAt(slog.LevelWarn, "shutdown: second signal, forcing", "signal", sig.String())
		case <-triggers:
			s.logAt(slog.LevelWarn, "shutdown: second trigger, forcing")
		case <-forceCtx.Done():
			return
		}
		force(ErrSecondSignal)
		signal.Stop(ch)
	}()

	if s.Delay > 0 {
		s.log("shutdown: readiness off, waiting for load balancers", "delay", s.Delay.String())
		_ = sleep(forceCtx, s.Delay)
	}

	timeout := s.Timeout
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	dctx, cancel := context.WithTimeout(forceCtx, timeout)
	defer cancel()
	errs := s.drainAll(dctx)
	if context.Cause(forceCtx) == ErrSecondSignal {
		errs = append(errs, ErrSecondSignal)
	}
	err := errors.Join(errs...)
	if err != nil {
		s.logAt(slog.LevelError, "shutdown: done", "took", since(start), "ok", false)
		return err
	}
	s.log("shutdown: done", "took", since(start), "ok", true)
	return nil
}

// sameSignal takes from ch the signal that ended Run's context, when that
// context is a signal.NotifyContext's for one of the signals Run watches:
// the one signal reached both, and must not count as the second, which
// forces. It waits for it at most a second: the signal is delivered to
// both channels at once.
func (s *Shutdown) sameSignal(ch chan os.Signal, cause error) {
	if !isSignalCause(cause) {
		return
	}
	name := strings.TrimSuffix(cause.Error(), " signal received")
	if !slices.ContainsFunc(s.signals(), func(sig os.Signal) bool { return sig.String() == name }) {
		return
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case sig := <-ch:
		if sig.String() != name {
			select {
			case ch <- sig: // another signal after all: keep it, it forces
			default: // two more are pending: the shutdown is forced anyway
			}
		}
	case <-t.C:
	}
}

// drainResult is what a drain's goroutine hands back to drainAll.
type drainResult struct {
	i    int
	err  error
	took time.Duration
}

// drainAll runs the drains, registered ones and those registered while it
// runs, under dctx: one at a time while dctx lasts, then all those left at
// once, and gives them ShutdownGrace from the end of dctx to return. It
// returns their errors in registration order.
func (s *Shutdown) drainAll(dctx context.Context) []error {
	added := make(chan struct{}, 1)
	s.mu.Lock()
	s.added = added
	s.mu.Unlock()

	results := make(chan drainResult)
	abandoned := make(chan struct{})
	defer close(abandoned)
	var (
		errs    []error // by drain index; nil for a drain that succeeded
		names   []string
		running = map[int]bool{}
		expired = dctx.Done() // nil once forced: that case is done with
		grace   <-chan time.Time
		timer   *time.Timer
		// spent fires when the running drain's share of the Timeout is
		// over (RegisterReserved): the next may start, while it is forced.
		spent      <-chan time.Time
		spentTimer *time.Timer
		advance    bool
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
		if spentTimer != nil {
			spentTimer.Stop()
		}
	}()
	end, _ := dctx.Deadline()
	record := func(r drainResult) {
		delete(running, r.i)
		took := r.took.Round(time.Millisecond).String()
		if r.err != nil {
			s.logAt(slog.LevelError, "shutdown: drain failed", "drain", names[r.i], "took", took, "error", r.err)
			errs[r.i] = fmt.Errorf("llmdrain: drain %q: %w", names[r.i], r.err)
			return
		}
		s.log("shutdown: drained", "drain", names[r.i], "took", took)
	}
	for {
		s.mu.Lock()
		for len(names) < len(s.drains) && (len(running) == 0 || expired == nil || advance) {
			i, d := len(names), s.drains[len(names)]
			names, errs = append(names, d.name), append(errs, nil)
			running[i] = true
			ctx, cancel := dctx, context.CancelFunc(func() {})
			advance = false
			if later := reservedAfter(s.drains[i+1:]); later > 0 && expired != nil && !end.IsZero() {
				// Its share ends where the later drains' reserves begin.
				shareEnd := end.Add(-later)
				ctx, cancel = context.WithDeadlineCause(dctx, shareEnd, errShareSpent)
				if spentTimer != nil {
					spentTimer.Stop()
				}
				spentTimer = time.NewTimer(time.Until(shareEnd))
				spent = spentTimer.C
			} else {
				spent = nil
			}
			go func() {
				defer cancel()
				t := time.Now()
				err := s.call(ctx, d)
				select {
				case results <- drainResult{i, err, time.Since(t)}:
				case <-abandoned:
					s.logAt(slog.LevelWarn, "shutdown: abandoned drain returned after Run", "drain", d.name, "took", since(t), "error", err)
				}
			}()
		}
		if len(running) == 0 {
			s.finished, s.added = true, nil
			s.mu.Unlock()
			break
		}
		s.mu.Unlock()

		select {
		case r := <-results:
			record(r)
		case <-expired:
			expired = nil
			timer = time.NewTimer(ShutdownGrace)
			grace = timer.C
			s.logAt(slog.LevelWarn, "shutdown: forcing the drains", "cause", context.Cause(dctx))
		case <-added:
		case <-spent:
			spent = nil
			advance = true
			if i := len(names) - 1; running[i] {
				s.logAt(slog.LevelWarn, "shutdown: drain's share of the timeout spent, forcing it", "drain", names[i])
			}
		case <-grace:
			s.mu.Lock()
			// A drain registered since the last round has not been started:
			// too late to give it any time.
			for i := len(names); i < len(s.drains); i++ {
				s.logAt(slog.LevelError, "shutdown: drain registered too late, not run", "drain", s.drains[i].name)
				errs = append(errs, fmt.Errorf("llmdrain: drain %q registered as Run gave up, not run", s.drains[i].name))
			}
			s.finished, s.added = true, nil
			s.mu.Unlock()
			// Take the results of drains that returned just now.
			for ready := true; ready && len(running) > 0; {
				select {
				case r := <-results:
					record(r)
				default:
					ready = false
				}
			}
			for i := range names {
				if running[i] {
					s.logAt(slog.LevelError, "shutdown: drain would not stop, abandoned", "drain", names[i], "grace", ShutdownGrace.String())
					errs[i] = fmt.Errorf("llmdrain: drain %q did not return within %v of being forced, abandoned: %w", names[i], ShutdownGrace, context.Cause(dctx))
				}
			}
			return errs
		}
	}
	return errs
}

// errShareSpent ends the context of a drain whose share of the Timeout is
// over: the time left is reserved for the drains after it
// (RegisterReserved). It matches context.DeadlineExceeded, as the
// Timeout's own end does.
var errShareSpent error = shareSpentError{}

type shareSpentError struct{}

func (shareSpentError) Error() string {
	return "llmdrain: drain's share of Shutdown.Timeout spent, the rest is reserved for the drains after it"
}

func (shareSpentError) Is(target error) bool { return target == context.DeadlineExceeded }

// reservedAfter adds up the reserves of drains.
func reservedAfter(drains []namedDrain) time.Duration {
	var d time.Duration
	for _, n := range drains {
		d += n.reserve
	}
	return d
}

// call runs drain d under ctx, and turns a panic into its error. The panic
// value is kept (an error panicked with is wrapped) and the stack logged:
// llmdrain's own drains never put a secret in either.
func (s *Shutdown) call(ctx context.Context, d namedDrain) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.logAt(slog.LevelError, "shutdown: drain panicked", "drain", d.name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			if pe, ok := p.(error); ok {
				err = fmt.Errorf("panicked: %w", pe)
			} else {
				err = fmt.Errorf("panicked: %v", p)
			}
		}
	}()
	return d.drain(ctx)
}

// since renders an elapsed time for logs: slog's JSON handler would write
// a time.Duration as an integer of nanoseconds.
func since(t time.Time) string { return time.Since(t).Round(time.Millisecond).String() }

// log logs a step at INFO, logAt one at level: WARN for what forces,
// ERROR for what fails.
func (s *Shutdown) log(msg string, args ...any) { s.logAt(slog.LevelInfo, msg, args...) }

func (s *Shutdown) logAt(level slog.Level, msg string, args ...any) {
	if s.Logger != nil {
		s.Logger.Log(context.Background(), level, msg, args...)
	}
}
