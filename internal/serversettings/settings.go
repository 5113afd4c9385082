// Package serversettings reads the server example's configuration from its
// environment and states its shutdown timing budget.
//
// It lives here, in the library's module rather than in examples/server
// (a module of its own, for its OpenTelemetry dependencies), and is a
// package of its own so that the Kubernetes manifests' tests (in
// examples/server/k8s and examples/batch/k8s, separate modules) check
// terminationGracePeriodSeconds with the very code and defaults the server
// runs with: they feed the manifest's env to FromEnv and compare the grace
// period with ShutdownBudget.
package serversettings

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Environment variables read by FromEnv.
const (
	EnvAddr         = "ADDR"
	EnvDrainDelay   = "DRAIN_DELAY"
	EnvDrainTimeout = "DRAIN_TIMEOUT"
	EnvLogLevel     = "LOG_LEVEL"

	EnvMaxInFlight     = "MAX_IN_FLIGHT"
	EnvMaxBodyBytes    = "MAX_BODY_BYTES"
	EnvAllowedModels   = "ALLOWED_MODELS"
	EnvMaxOutputTokens = "MAX_OUTPUT_TOKENS"
	EnvHeaderTimeout   = "HEADER_TIMEOUT"
	EnvBodyTimeout     = "BODY_TIMEOUT"
	EnvWriteTimeout    = "WRITE_TIMEOUT"
	EnvIdleTimeout     = "IDLE_TIMEOUT"

	EnvMetricsAddr   = "METRICS_ADDR"
	EnvMetricsLinger = "METRICS_LINGER"
)

// Defaults for unset variables.
const (
	DefaultAddr = ":8080"
	// DefaultDrainDelay is 0 because on Kubernetes the preStop hook does
	// the waiting; set DRAIN_DELAY where there is no preStop hook.
	DefaultDrainDelay   = 0 * time.Second
	DefaultDrainTimeout = 60 * time.Second
	DefaultLogLevel     = slog.LevelInfo

	// DefaultMaxInFlight bounds the generate requests handled at once;
	// more are answered 503 with Retry-After before their body is read,
	// so a load balancer tries another replica.
	DefaultMaxInFlight = 64
	// DefaultMaxBodyBytes bounds a generate request's body, its prompt
	// included: 256 KiB is about 60,000 tokens of English.
	DefaultMaxBodyBytes = 256 << 10
	// DefaultMaxOutputTokens caps every answer (max_completion_tokens).
	DefaultMaxOutputTokens = 1024
	// DefaultHeaderTimeout bounds reading a request's headers.
	DefaultHeaderTimeout = 5 * time.Second
	// DefaultBodyTimeout bounds reading a request's body once its
	// headers are in.
	DefaultBodyTimeout = 10 * time.Second
	// DefaultWriteTimeout bounds each write to a client: a plain answer,
	// or one event of a stream. A client that stops reading is dropped
	// and its LLM call cancelled.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultIdleTimeout closes a keep-alive connection idle this long.
	DefaultIdleTimeout = 60 * time.Second
	// DefaultMetricsLinger is 0: /metrics closes when the process exits.
	DefaultMetricsLinger = 0 * time.Second
)

// MaxHeaderBytes bounds a request's headers: 16 KiB is far above what a
// browser or an API client sends, and 300 connections each dribbling a
// megabyte of headers must not take the pod's memory.
const MaxHeaderBytes = 16 << 10

// DefaultModel is the only model a client may ask for when ALLOWED_MODELS
// is unset: llmdrain's default, which the server also uses when a request
// names none.
const DefaultModel = "gpt-4o"

// ExitGrace bounds how long the process may still run once DrainTimeout
// has passed: llmdrain.Shutdown.Run returns at most ShutdownGrace (1.25 s)
// after its Timeout (the forced phase cancels what is left and waits that
// long for it), then the embedded resources close and the process exits.
const ExitGrace = 2 * time.Second

// MinMargin is the least headroom a deployment must leave on top of
// ShutdownBudget, for what no number here covers: signal delivery, a
// loaded node, log flushing.
const MinMargin = 5 * time.Second

// Settings is the server's configuration.
type Settings struct {
	// Addr is the listen address, such as ":8080"; a port of 0 picks a
	// free one, which the server logs.
	Addr string
	// DrainDelay is how long the server keeps serving, readiness already
	// at 503, after the first SIGTERM and before it stops accepting
	// connections: time for load balancers to stop sending.
	DrainDelay time.Duration
	// DrainTimeout bounds the wait for in-flight requests, streams
	// included, after the delay; then they are cut.
	DrainTimeout time.Duration
	// LogLevel is the least level logged.
	LogLevel slog.Level

	// MaxInFlight bounds the generate requests handled at once.
	MaxInFlight int
	// MaxBodyBytes bounds a generate request's body.
	MaxBodyBytes int64
	// AllowedModels are the models a client may ask for; the first is
	// used when a request names none.
	AllowedModels []string
	// MaxOutputTokens caps every answer.
	MaxOutputTokens int
	// HeaderTimeout, BodyTimeout, WriteTimeout and IdleTimeout bound the
	// phases of a client's exchange; see the Default* constants.
	HeaderTimeout, BodyTimeout, WriteTimeout, IdleTimeout time.Duration

	// MetricsAddr is the listen address of /metrics, for Prometheus; ""
	// (the default) serves none. A listener of its own, so that the main
	// port can drain while Prometheus still scrapes.
	MetricsAddr string
	// MetricsLinger is how long /metrics stays up once the drain is over,
	// so that Prometheus scrapes its outcome (in flight back to 0, the
	// drain recorded) before the process exits: more than one scrape
	// interval. 0 exits at once.
	MetricsLinger time.Duration
}

// FromEnv reads the settings through lookup (os.LookupEnv in the server)
// and applies the defaults to unset or empty variables. Every problem is
// reported, joined.
func FromEnv(lookup func(string) (string, bool)) (Settings, error) {
	s := Settings{
		Addr: DefaultAddr, DrainDelay: DefaultDrainDelay, DrainTimeout: DefaultDrainTimeout, LogLevel: DefaultLogLevel,
		MaxInFlight: DefaultMaxInFlight, MaxBodyBytes: DefaultMaxBodyBytes, AllowedModels: []string{DefaultModel},
		MaxOutputTokens: DefaultMaxOutputTokens, HeaderTimeout: DefaultHeaderTimeout, BodyTimeout: DefaultBodyTimeout,
		WriteTimeout: DefaultWriteTimeout, IdleTimeout: DefaultIdleTimeout,
	}
	var errs []error
	if v, ok := lookup(EnvAddr); ok && v != "" {
		s.Addr = v
	}
	if v, ok := lookup(EnvMetricsAddr); ok && v != "" {
		s.MetricsAddr = v
	}
	duration := func(name string, dst *time.Duration, positive bool) {
		v, ok := lookup(name)
		if !ok || v == "" {
			return
		}
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s=%q: not a duration such as 30s", name, v))
		case d < 0 || (positive && d == 0):
			errs = append(errs, fmt.Errorf("%s=%q: must be positive", name, v))
		default:
			*dst = d
		}
	}
	duration(EnvDrainDelay, &s.DrainDelay, false)
	duration(EnvDrainTimeout, &s.DrainTimeout, true)
	duration(EnvHeaderTimeout, &s.HeaderTimeout, true)
	duration(EnvBodyTimeout, &s.BodyTimeout, true)
	duration(EnvWriteTimeout, &s.WriteTimeout, true)
	duration(EnvIdleTimeout, &s.IdleTimeout, true)
	duration(EnvMetricsLinger, &s.MetricsLinger, false)
	count := func(name string, set func(int64)) {
		v, ok := lookup(name)
		if !ok || v == "" {
			return
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			errs = append(errs, fmt.Errorf("%s=%q: want a positive whole number", name, v))
			return
		}
		set(n)
	}
	count(EnvMaxInFlight, func(n int64) { s.MaxInFlight = int(min(n, 1<<20)) })
	count(EnvMaxBodyBytes, func(n int64) { s.MaxBodyBytes = n })
	count(EnvMaxOutputTokens, func(n int64) { s.MaxOutputTokens = int(min(n, 1<<30)) })
	if v, ok := lookup(EnvAllowedModels); ok && v != "" {
		s.AllowedModels = nil
		for _, m := range strings.Split(v, ",") {
			if m = strings.TrimSpace(m); m != "" {
				s.AllowedModels = append(s.AllowedModels, m)
			}
		}
		if len(s.AllowedModels) == 0 {
			errs = append(errs, fmt.Errorf("%s=%q: name at least one model", EnvAllowedModels, v))
		}
	}
	if v, ok := lookup(EnvLogLevel); ok && v != "" {
		if err := s.LogLevel.UnmarshalText([]byte(strings.ToUpper(v))); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want debug, info, warn or error", EnvLogLevel, v))
		}
	}
	return s, errors.Join(errs...)
}

// ShutdownBudget is the longest the server can take to exit once its pod
// starts terminating: preStop (the hook, run before SIGTERM is sent), then
// DrainDelay, then DrainTimeout, then MetricsLinger, then ExitGrace. A Kubernetes
// terminationGracePeriodSeconds must be at least this plus MinMargin, or
// the kubelet's SIGKILL cuts the requests the drain was waiting for.
func (s Settings) ShutdownBudget(preStop time.Duration) time.Duration {
	return preStop + s.DrainDelay + s.DrainTimeout + s.MetricsLinger + ExitGrace
}
