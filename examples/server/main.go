// Command server is an HTTP service that wraps LLM calls and shuts down
// without losing any of them: the service the examples deploy to
// Kubernetes (see k8s/).
//
//	cd examples/server && go run .
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
//	MAX_IN_FLIGHT      generate requests handled at once; more get 503 and
//	                   Retry-After before their body is read (default 64)
//	MAX_BODY_BYTES     largest generate body, prompt included; 413 above
//	                   (default 262144)
//	ALLOWED_MODELS     comma-separated models a client may ask for; the
//	                   first is used when it names none (default gpt-4o)
//	MAX_OUTPUT_TOKENS  cap on every answer, sent as max_completion_tokens
//	                   (default 1024)
//	HEADER_TIMEOUT     to send the request headers (default 5s)
//	BODY_TIMEOUT       to send the request body once the headers are in;
//	                   408 after (default 10s)
//	WRITE_TIMEOUT      for each write to the client: a plain answer, or one
//	                   event of a stream; a client that stops reading is
//	                   dropped and its LLM call cancelled (default 10s)
//	IDLE_TIMEOUT       a keep-alive connection idle this long is closed
//	                   (default 60s)
//	METRICS_ADDR       listen address of GET /metrics, the client's
//	                   OpenTelemetry metrics for Prometheus (default none:
//	                   no metrics)
//	METRICS_LINGER     how long /metrics stays up after the drain, so
//	                   Prometheus scrapes its outcome (default 0)
//
// Request headers are limited to 16 KiB (431 above). Errors are JSON,
// {"error": "..."}, 404 and 405 included.
//
// On SIGTERM (or Ctrl-C) it turns /readyz to 503, keeps serving for
// DRAIN_DELAY, stops accepting connections, lets every in-flight generate,
// streams included, finish within DRAIN_TIMEOUT, and exits 0. Requests cut
// at that deadline make it exit 1; so does a second signal, which cuts them
// at once.
//
// /metrics has a listener of its own, so that it keeps answering while the
// main one drains; it closes when the process exits, METRICS_LINGER after
// the drain.
//
// Logs are structured (slog), JSON when stderr is not a terminal, and never
// contain the API key.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/examples/internal/offline"
	"github.com/llmdrain/llmdrain/internal/serversettings"
)

func main() {
	os.Exit(run())
}

func run() int {
	cfg, err := serversettings.FromEnv(os.LookupEnv)
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
	// The LLM calls are bounded like the requests that make them.
	llmCfg.MaxConcurrent = cfg.MaxInFlight
	metrics, err := startMetrics(cfg.MetricsAddr, logger)
	if err != nil {
		logger.Error("cannot serve metrics", "addr", cfg.MetricsAddr, "error", err)
		return 1
	}
	// Closed last but for the backend: Prometheus scrapes the drain's
	// outcome while the process lingers.
	defer metrics.Close()
	if metrics != nil {
		llmCfg.Hooks = metrics.Hooks
	}
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
	route(mux, "/healthz", http.MethodGet, sd.LiveHandler())
	route(mux, "/readyz", http.MethodGet, sd.ReadyHandler())
	route(mux, "/v1/generate", http.MethodPost, newGenerator(client, logger, cfg))
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	}))
	srv := &http.Server{
		Handler:           accessLog(logger, mux),
		ReadHeaderTimeout: cfg.HeaderTimeout,
		MaxHeaderBytes:    serversettings.MaxHeaderBytes,
		IdleTimeout:       cfg.IdleTimeout,
		// No ReadTimeout or WriteTimeout: they would cut long streamed
		// answers. The generator bounds reading each body and each write
		// itself.
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
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
	metrics.Linger(cfg.MetricsLinger)
	if err != nil {
		logger.Error("shutdown cut requests short", "error", err)
		return 1
	}
	logger.Info("shutdown complete, every request finished")
	return 0
}

// route serves h at path for one method (GET also answers HEAD); any
// other method gets a JSON 405 naming the allowed one.
func route(mux *http.ServeMux, path, method string, h http.Handler) {
	mux.Handle(path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method && (method != http.MethodGet || r.Method != http.MethodHead) {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s is not supported; use %s", r.Method, path, method))
			return
		}
		h.ServeHTTP(w, r)
	}))
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
		switch {
		case rec.logAs != 0:
			status = rec.logAs
		case status == 0:
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
	logAs  int // the status to log instead, such as 499; 0: status
}

// logStatus makes the access log show status for the request answered
// through w, whatever was sent: 499 for a client that went away.
func logStatus(w http.ResponseWriter, status int) {
	for {
		switch v := w.(type) {
		case *recorder:
			v.logAs = status
			return
		case interface{ Unwrap() http.ResponseWriter }:
			w = v.Unwrap()
		default:
			return
		}
	}
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
