// Command worker is the shape of most services that adopt llmdrain: an
// HTTP API, a background worker, and the signal.NotifyContext they already
// had, with two LLM clients sharing one Tracker. On SIGTERM the worker
// stops taking jobs but its LLM call in flight finishes, instead of being
// cancelled by the very signal that stops the service.
//
//	go run ./examples/worker
//	curl -s localhost:8080/v1/ask -d 'why is the sky blue?'
//
// Endpoints:
//
//	POST /v1/ask   the body is the prompt; answers the text (the fast model)
//	GET /healthz   liveness: 200 for as long as the process serves
//	GET /readyz    readiness: 200, then 503 from the first SIGTERM
//
// The worker runs a job every JOB_INTERVAL: it asks the smart model to
// summarise report #n and prints "job n: <answer>" on stdout.
//
// Configuration, from the environment:
//
//	ADDR               listen address (default :8080; port 0 picks one, logged)
//	HOLYSHEEP_API_KEY  the LLM API key; without it an embedded fake LLM answers
//	HOLYSHEEP_BASE_URL the LLM API root (default HolySheep's)
//	JOB_INTERVAL       time between the worker's jobs (default 2s)
//	DRAIN_TIMEOUT      bound on the whole drain (default 30s)
//	LLM_RESERVE        share of DRAIN_TIMEOUT kept for the worker's job and
//	                   the LLM calls, whatever the HTTP drain takes (default 10s)
//
// On the first SIGTERM (or Ctrl-C) /readyz turns 503, the worker takes no
// new job, the HTTP server drains its requests, then the worker's job and
// every LLM call of both clients finish, and the process exits 0. A call
// cut at DRAIN_TIMEOUT, or by a second signal, makes it exit 1.
//
// Logs are JSON (slog) on stderr and never contain the API key.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/examples/internal/offline"
)

func main() {
	os.Exit(run())
}

// settings are the worker's configuration.
type settings struct {
	addr         string
	jobInterval  time.Duration
	drainTimeout time.Duration
	llmReserve   time.Duration
}

func fromEnv() (settings, error) {
	s := settings{addr: ":8080", jobInterval: 2 * time.Second, drainTimeout: 30 * time.Second, llmReserve: 10 * time.Second}
	if v := os.Getenv("ADDR"); v != "" {
		s.addr = v
	}
	var errs []error
	for _, d := range []struct {
		name string
		dst  *time.Duration
	}{{"JOB_INTERVAL", &s.jobInterval}, {"DRAIN_TIMEOUT", &s.drainTimeout}, {"LLM_RESERVE", &s.llmReserve}} {
		v := os.Getenv(d.name)
		if v == "" {
			continue
		}
		t, err := time.ParseDuration(v)
		if err != nil || t <= 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a positive duration such as 10s", d.name, v))
			continue
		}
		*d.dst = t
	}
	if s.llmReserve >= s.drainTimeout {
		errs = append(errs, fmt.Errorf("LLM_RESERVE (%v) must be shorter than DRAIN_TIMEOUT (%v)", s.llmReserve, s.drainTimeout))
	}
	return s, errors.Join(errs...)
}

func run() int {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg, err := fromEnv()
	if err != nil {
		logger.Error("bad configuration", "error", err)
		return 2
	}

	// The service's own signal handling, as it was before llmdrain: ctx
	// ends at the first SIGTERM or Ctrl-C. Its loops watch it; its LLM
	// calls must not use it (see worker).
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()

	backend, err := offline.Open(offline.Fake{Latency: 500 * time.Millisecond})
	if err != nil {
		logger.Error("bad configuration", "error", err)
		return 2
	}
	defer backend.Close() // after the drains: the fake LLM outlives the calls

	// Two clients, one Tracker: a drain of it waits for the calls of both.
	tracker := llmdrain.NewTracker()
	fastCfg, smartCfg := backend.Config, backend.Config
	fastCfg.Model, fastCfg.Tracker, fastCfg.Logger = "gpt-4o-mini", tracker, logger
	smartCfg.Model, smartCfg.Tracker, smartCfg.Logger = "gpt-4o", tracker, logger
	fast, err := llmdrain.New(fastCfg)
	if err != nil {
		logger.Error("bad LLM configuration", "error", err)
		return 2
	}
	smart, err := llmdrain.New(smartCfg)
	if err != nil {
		logger.Error("bad LLM configuration", "error", err)
		return 2
	}

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		logger.Error("cannot listen", "addr", cfg.addr, "error", err)
		return 1
	}
	sd := &llmdrain.Shutdown{Timeout: cfg.drainTimeout, Logger: logger}
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", sd.LiveHandler())
	mux.Handle("GET /readyz", sd.ReadyHandler())
	mux.HandleFunc("POST /v1/ask", func(w http.ResponseWriter, r *http.Request) {
		prompt, err := io.ReadAll(io.LimitReader(r.Body, 64<<10))
		if err != nil {
			http.Error(w, "cannot read the prompt", http.StatusBadRequest)
			return
		}
		// A handler's call uses the request's context: if the client goes
		// away there is nobody to answer. The server's drain waits for
		// the handler, and so for its call.
		text, err := fast.Chat(r.Context(), string(prompt))
		switch {
		case errors.Is(err, llmdrain.ErrDraining):
			http.Error(w, "shutting down, try another replica", http.StatusServiceUnavailable)
		case err != nil:
			logger.Warn("ask failed", "error", err)
			http.Error(w, "the model did not answer", http.StatusBadGateway)
		default:
			fmt.Fprintln(w, text)
		}
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}

	var jobs sync.WaitGroup
	jobs.Add(1)
	go func() {
		defer jobs.Done()
		worker(ctx, smart, cfg.jobInterval, logger)
	}()

	// In order: the inbound requests, then the worker's job in flight,
	// then whatever LLM call is left. The worker and the LLM calls keep
	// LLM_RESERVE of the timeout, however long the HTTP drain takes.
	sd.RegisterServer("http", srv)
	sd.RegisterReserved("worker", cfg.llmReserve, func(ctx context.Context) error {
		return waitGroup(ctx, &jobs)
	})
	sd.Register("llm", func(ctx context.Context) error {
		err := fast.Shutdown(ctx) // drains the shared Tracker: both clients' calls
		_ = smart.Shutdown(ctx)   // the same verdict at once; closes smart's idle connections
		return err
	})
	sd.Notify() // before serving: a SIGTERM from now on drains

	// Signals go to ctx and to sd at once; calling stop when ctx ends gives
	// them back their default action once sd lets go of them too (after a
	// second signal), so a third Ctrl-C always kills.
	context.AfterFunc(ctx, stop)

	// The server's failure shuts the rest down the usual way.
	runCtx, cancelRun := context.WithCancelCause(ctx)
	defer cancelRun(nil)
	var serveErr error
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			serveErr = err
			cancelRun(err)
		}
	}()
	logger.Info("listening", "addr", ln.Addr().String(), "llm", backend.String(),
		"drain_timeout", cfg.drainTimeout.String(), "llm_reserve", cfg.llmReserve.String())

	// Run begins at the first signal, which it watches itself (ctx, the
	// NotifyContext, ends at the same signal: it counts once).
	err = sd.Run(runCtx)
	srv.Close() // no-op after a clean drain; unblocks Serve if it never ran
	<-served
	if serveErr != nil {
		logger.Error("server failed", "error", serveErr)
		return 1
	}
	if err != nil {
		logger.Error("shutdown cut work short", "error", err)
		return 1
	}
	logger.Info("shutdown complete, every job and call finished")
	return 0
}

// worker runs a job every interval until ctx ends. ctx is the signal's
// context: it tells the worker to take no new job, and nothing else. The
// job's LLM call gets context.WithoutCancel(ctx), with its own bound, so
// the signal does not cut it: the drain waits for it, and cancels it with
// cause llmdrain.ErrForcedShutdown if the drain's time runs out.
func worker(ctx context.Context, llm *llmdrain.Client, interval time.Duration, logger *slog.Logger) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
		// Checked apart: a select with both ready picks either.
		if ctx.Err() != nil {
			logger.Info("worker: stopping, no new job", "next_job", n)
			return
		}
		callCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		logger.Info("worker: job started", "job", n)
		text, err := llm.Chat(callCtx, fmt.Sprintf("Summarise report #%d", n))
		cancel()
		switch {
		case errors.Is(err, llmdrain.ErrDraining):
			logger.Info("worker: job not started, shutting down", "job", n)
			return
		case err != nil:
			logger.Error("worker: job failed", "job", n, "error", err)
			continue
		}
		fmt.Printf("job %d: %s\n", n, text)
		logger.Info("worker: job done", "job", n)
	}
}

// waitGroup waits for wg, or for ctx to end: then it reports that the
// work it waited for was cut.
func waitGroup(ctx context.Context, wg *sync.WaitGroup) error {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the worker's job is still running: %w", context.Cause(ctx))
	}
}
