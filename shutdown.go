package llmdrain

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
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
//  3. runs the registered drains in registration order (register the
//     inbound http.Server first, then the LLM clients), all under one
//     Timeout;
//  4. at the Timeout, the drains still running are forced: servers close
//     their connections, clients cancel their calls with cause
//     ErrForcedShutdown, and the stragglers are reported in Run's error.
//
// A second signal (or Trigger) at any point during steps 2 to 4 forces at
// once: the delay is cut short and every drain's context is cancelled with
// cause ErrForcedShutdown.
//
// Nothing is installed at import time: signals are watched only while Run
// runs. The zero value is ready to use; set the fields before calling Run.
// A Shutdown must not be copied after first use.
type Shutdown struct {
	// Delay is waited after readiness turns off, before draining.
	Delay time.Duration
	// Timeout bounds all drains together. 0 means DefaultShutdownTimeout.
	// Run returns at most about one second after it.
	Timeout time.Duration
	// Signals start the shutdown; the second one forces it. Nil means
	// SIGTERM and SIGINT.
	Signals []os.Signal
	// Logger receives each step. Nil means silent.
	Logger *slog.Logger

	mu       sync.Mutex
	drains   []namedDrain
	triggers chan struct{}
	stopCh   chan struct{}  // closed when the shutdown begins
	sigCh    chan os.Signal // nil until Notify
	stopping atomic.Bool
	ran      atomic.Bool
}

type namedDrain struct {
	name  string
	drain func(context.Context) error
}

// Register adds a drain, run after those registered before it. drain must
// return once its work is done, or soon after ctx ends, forcing what is
// left. Client.Shutdown and Tracker.Drain fit as they are.
func (s *Shutdown) Register(name string, drain func(ctx context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drains = append(s.drains, namedDrain{name, drain})
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
// Run returns nil when every drain finished within the timeout, and
// otherwise the drains' errors joined, each naming its drain; errors.Is
// matches ErrForcedShutdown after a second signal and
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

	// A second signal cancels everything with ErrForcedShutdown.
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
	s.mu.Lock()
	drains := append([]namedDrain(nil), s.drains...)
	s.mu.Unlock()

	var errs []error
	for _, d := range drains {
		t := time.Now()
		if err := d.drain(dctx); err != nil {
			s.log("shutdown: drain failed", "drain", d.name, "took", since(t), "error", err)
			errs = append(errs, fmt.Errorf("llmdrain: drain %q: %w", d.name, err))
			continue
		}
		s.log("shutdown: drained", "drain", d.name, "took", since(t))
	}
	if context.Cause(forceCtx) == ErrForcedShutdown {
		errs = append(errs, ErrForcedShutdown)
	}
	err := errors.Join(errs...)
	s.log("shutdown: done", "took", since(start), "ok", err == nil)
	return err
}

// since renders an elapsed time for logs: slog's JSON handler would write
// a time.Duration as an integer of nanoseconds.
func since(t time.Time) string { return time.Since(t).Round(time.Millisecond).String() }

func (s *Shutdown) log(msg string, args ...any) {
	if s.Logger != nil {
		s.Logger.Info(msg, args...)
	}
}
