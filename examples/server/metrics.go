package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/otelmetrics"
)

// metricsServer serves the LLM client's metrics on GET /metrics, in
// Prometheus' format, on a listener of its own. A nil one is off.
type metricsServer struct {
	Hooks    *llmdrain.Hooks
	Addr     string // where /metrics is served
	srv      *http.Server
	served   chan struct{}
	provider *sdkmetric.MeterProvider
	logger   *slog.Logger
}

// startMetrics serves /metrics on addr; "" serves nothing and returns nil.
func startMetrics(addr string, logger *slog.Logger) (*metricsServer, error) {
	if addr == "" {
		return nil, nil
	}
	// A registry of its own rather than Prometheus' global one: only
	// what this server records, and nothing registered by an import.
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	hooks, err := otelmetrics.New(provider)
	if err != nil {
		return nil, errors.Join(err, provider.Shutdown(context.Background()))
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, errors.Join(err, provider.Shutdown(context.Background()))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}))
	m := &metricsServer{
		Hooks:    hooks,
		Addr:     ln.Addr().String(),
		srv:      &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)},
		served:   make(chan struct{}),
		provider: provider,
		logger:   logger,
	}
	go func() {
		defer close(m.served)
		if err := m.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server failed", "error", err)
		}
	}()
	logger.Info("serving metrics", "addr", m.Addr, "path", "/metrics")
	return m, nil
}

// Linger keeps /metrics up for d, so that Prometheus scrapes what the
// drain recorded before the process exits.
func (m *metricsServer) Linger(d time.Duration) {
	if m == nil || d <= 0 {
		return
	}
	m.logger.Info("metrics: lingering before exit", "for", d.String())
	time.Sleep(d)
}

// Close stops serving /metrics at once.
func (m *metricsServer) Close() {
	if m == nil {
		return
	}
	m.srv.Close()
	<-m.served
	_ = m.provider.Shutdown(context.Background())
}
