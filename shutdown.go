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
//     clients), all under one Timeout;
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
// cause ErrForcedShutdown, the drains not yet started are started, and Run
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
	// Logger receives each step. Nil means silent.
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
	name  string
	drain func(context.Context) error
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
	s.mu.Lock()
	if !s.finished {
		s.drains = append(s.drains, namedDrain{name, drain})
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
	if err := s.call(ctx, namedDrain{name, drain}); err != nil {
		s.log("shutdown: drain registered after Run failed", "drain", name, "took", since(t), "error", err)
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
// signal. Until Run (or Notify) has started watching them, the stop
// signals keep their default action (a SIGTERM kills the process): call
// Notify before serving traffic if Run comes later.
//
// Run returns at most Delay + Timeout + ShutdownGrace after the first
// signal (at most ShutdownGrace after a second one), whatever the drains
// do. It returns nil when every drain finished within the timeout, and
// otherwise the drains' errors joined, in registration order, each naming
// its drain: the error a drain returned, the value a drain panicked with,
// or that a drain did not return within ShutdownGrace of being forced.
// errors.Is matches ErrForcedShutdown after a second signal and
// context.DeadlineExceeded after the timeout. Run is meant to be called
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
	}
	start := time.Now()
	s.stopping.Store(true)
	close(s.stopChan())

	// A second signal cancels everything with ErrForcedShutdown, and gives
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
			s.log("shutdown: second signal, forcing", "signal", sig.String())
		case <-triggers:
			s.log("shutdown: second trigger, forcing")
		case <-forceCtx.Done():
			return
		}
		force(ErrForcedShutdown)
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
	if context.Cause(forceCtx) == ErrForcedShutdown {
		errs = append(errs, ErrForcedShutdown)
	}
	err := errors.Join(errs...)
	s.log("shutdown: done", "took", since(start), "ok", err == nil)
	return err
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
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	record := func(r drainResult) {
		delete(running, r.i)
		took := r.took.Round(time.Millisecond).String()
		if r.err != nil {
			s.log("shutdown: drain failed", "drain", names[r.i], "took", took, "error", r.err)
			errs[r.i] = fmt.Errorf("llmdrain: drain %q: %w", names[r.i], r.err)
			return
		}
		s.log("shutdown: drained", "drain", names[r.i], "took", took)
	}
	for {
		s.mu.Lock()
		for len(names) < len(s.drains) && (len(running) == 0 || expired == nil) {
			i, d := len(names), s.drains[len(names)]
			names, errs = append(names, d.name), append(errs, nil)
			running[i] = true
			go func() {
				t := time.Now()
				err := s.call(dctx, d)
				select {
				case results <- drainResult{i, err, time.Since(t)}:
				case <-abandoned:
					s.log("shutdown: abandoned drain returned after Run", "drain", d.name, "took", since(t), "error", err)
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
			s.log("shutdown: forcing the drains", "cause", context.Cause(dctx))
		case <-added:
		case <-grace:
			s.mu.Lock()
			// A drain registered since the last round has not been started:
			// too late to give it any time.
			for i := len(names); i < len(s.drains); i++ {
				s.log("shutdown: drain registered too late, not run", "drain", s.drains[i].name)
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
					s.log("shutdown: drain would not stop, abandoned", "drain", names[i], "grace", ShutdownGrace.String())
					errs[i] = fmt.Errorf("llmdrain: drain %q did not return within %v of being forced, abandoned: %w", names[i], ShutdownGrace, context.Cause(dctx))
				}
			}
			return errs
		}
	}
	return errs
}

// call runs drain d under ctx, and turns a panic into its error. The panic
// value is kept (an error panicked with is wrapped) and the stack logged:
// llmdrain's own drains never put a secret in either.
func (s *Shutdown) call(ctx context.Context, d namedDrain) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log("shutdown: drain panicked", "drain", d.name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
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

func (s *Shutdown) log(msg string, args ...any) {
	if s.Logger != nil {
		s.Logger.Info(msg, args...)
	}
}
