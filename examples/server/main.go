// Command server is an HTTP service that wraps LLM calls and shuts down
// without losing any of them: the service the examples deploy to
// Kubernetes (see k8s/).
//
//	go run ./examples/server
//	curl -s localhost:8080/v1/generate -d '{"prompt":"hello"}'
//	curl -sN localhost:8080/v1/generate -d '{"prompt":"hello","stream":true}'
//
// Endpoints:
//
//	POST /v1/generate  {"prompt": "...", "model": "..."} answers {"text": "..."};
//	                   with "stream": true the text is relayed as server-sent
//	                   events, data: {"text": "..."} per piece, then
//	                   data: [DONE]. A stream cut off upstream ends with an
//	                   "event: error" and no [DONE].
//	GET /healthz       liveness: 200 for as long as the process serves.
//	GET /readyz        readiness: 200, then 503 from the first SIGTERM.
//
// Configuration, from the environment:
//
//	ADDR               listen address (default :8080; port 0 picks one, logged)
//	HOLYSHEEP_API_KEY  the LLM API key; without it an embedded fake LLM answers
//	HOLYSHEEP_BASE_URL the LLM API root (default HolySheep's)
//	DRAIN_DELAY        serving time after SIGTERM, readiness at 503 (default 0)
//	DRAIN_TIMEOUT      bound on finishing in-flight requests (default 60s)
//	LOG_LEVEL          debug, info, warn or error (default info)
//
// On SIGTERM (or Ctrl-C) it turns /readyz to 503, keeps serving for
// DRAIN_DELAY, stops accepting connections, lets every in-flight generate,
// streams included, finish within DRAIN_TIMEOUT, and exits 0. Requests cut
// at that deadline make it exit 1; so does a second signal, which cuts them
// at once.
//
// Logs are structured (slog), JSON when stderr is not a terminal, and never
// contain the API key.
package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/examples/internal/offline"
	"github.com/llmdrain/llmdrain/examples/server/settings"
)

func main() {
	os.Exit(run())
}

func run() int {
	cfg, err := settings.FromEnv(os.LookupEnv)
	logger := newLogger(os.Stderr, cfg.LogLevel)
	if err != nil {
		logger.Error("bad configuration", "error", err)
		return 2
	}

	backend, err := offline.Open(offline.Fake{Latency: 400 * time.Millisecond, ChunkDelay: 40 * time.Millisecond})
	if err != nil {
		logger.Error("bad configuration", "error", err)
		return 2
	}
	// Closed last, after the drains: the embedded fake LLM must outlive
	// the calls made to it.
	defer backend.Close()
	llmCfg := backend.Config
	llmCfg.Logger = logger
	client, err := llmdrain.New(llmCfg)
	if err != nil {
		logger.Error("bad LLM configuration", "error", err)
		return 2
	}

	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		logger.Error("cannot listen", "addr", cfg.Addr, "error", err)
		return 1
	}

	sd := &llmdrain.Shutdown{Delay: cfg.DrainDelay, Timeout: cfg.DrainTimeout, Logger: logger}
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", sd.LiveHandler())
	mux.Handle("GET /readyz", sd.ReadyHandler())
	mux.Handle("POST /v1/generate", &generator{client: client, log: logger})
	srv := &http.Server{
		Handler:           accessLog(logger, mux),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	// The inbound server drains first: it stops accepting and waits for
	// the handlers, whose LLM calls are still admitted meanwhile. Then the
	// client drains whatever is left.
	sd.RegisterServer("http", srv)
	sd.Register("llm", client.Shutdown)
	// Watch the signals before serving: a SIGTERM in the moment before
	// Run starts must drain, not kill.
	sd.Notify()

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			cancel(err) // shut down the rest the usual way
		}
	}()
	logger.Info("listening", "addr", ln.Addr().String(), "llm", backend.String(),
		"drain_delay", cfg.DrainDelay.String(), "drain_timeout", cfg.DrainTimeout.String())

	err = sd.Run(ctx)
	srv.Close() // no-op after a clean drain; unblocks Serve if it never ran
	<-served
	if cause := context.Cause(ctx); cause != nil {
		logger.Error("server failed", "error", cause)
		return 1
	}
	if err != nil {
		logger.Error("shutdown cut requests short", "error", err)
		return 1
	}
	logger.Info("shutdown complete, every request finished")
	return 0
}

// newLogger logs JSON, for log collectors, unless w is a terminal.
func newLogger(w *os.File, level slog.Level) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if fi, err := w.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// accessLog logs each request once it is answered; probes only at debug
// level, since the kubelet sends one every few seconds.
func accessLog(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		level := slog.LevelInfo
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			level = slog.LevelDebug
		}
		status := rec.status
		if status == 0 {
			status = http.StatusOK
		}
		logger.LogAttrs(r.Context(), level, "request",
			slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.Int("status", status), slog.Int64("bytes", rec.bytes),
			slog.Float64("took_ms", float64(time.Since(start).Microseconds())/1000), slog.String("remote", r.RemoteAddr))
	})
}

// recorder notes the status and size of a response. Unwrap lets
// http.ResponseController reach the real writer to flush streams.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }
