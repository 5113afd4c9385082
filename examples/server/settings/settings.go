// Package settings reads the server example's configuration from its
// environment and states its shutdown timing budget.
//
// It is a package of its own so that the Kubernetes manifests' test (in
// ../k8s, a separate module) checks terminationGracePeriodSeconds with the
// very code and defaults the server runs with: it feeds the manifest's env
// to FromEnv and compares the grace period with ShutdownBudget.
package settings

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// Environment variables read by FromEnv.
const (
	EnvAddr         = "ADDR"
	EnvDrainDelay   = "DRAIN_DELAY"
	EnvDrainTimeout = "DRAIN_TIMEOUT"
	EnvLogLevel     = "LOG_LEVEL"
)

// Defaults for unset variables.
const (
	DefaultAddr = ":8080"
	// DefaultDrainDelay is 0 because on Kubernetes the preStop hook does
	// the waiting; set DRAIN_DELAY where there is no preStop hook.
	DefaultDrainDelay   = 0 * time.Second
	DefaultDrainTimeout = 60 * time.Second
	DefaultLogLevel     = slog.LevelInfo
)

// ExitGrace bounds how long the process may still run once DrainTimeout
// has passed: llmdrain.Shutdown.Run returns at most about one second after
// its Timeout (the forced phase cancels what is left and waits that long
// for it), then the embedded resources close and the process exits.
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
}

// FromEnv reads the settings through lookup (os.LookupEnv in the server)
// and applies the defaults to unset or empty variables. Every problem is
// reported, joined.
func FromEnv(lookup func(string) (string, bool)) (Settings, error) {
	s := Settings{Addr: DefaultAddr, DrainDelay: DefaultDrainDelay, DrainTimeout: DefaultDrainTimeout, LogLevel: DefaultLogLevel}
	var errs []error
	if v, ok := lookup(EnvAddr); ok && v != "" {
		s.Addr = v
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
	if v, ok := lookup(EnvLogLevel); ok && v != "" {
		if err := s.LogLevel.UnmarshalText([]byte(strings.ToUpper(v))); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: want debug, info, warn or error", EnvLogLevel, v))
		}
	}
	return s, errors.Join(errs...)
}

// ShutdownBudget is the longest the server can take to exit once its pod
// starts terminating: preStop (the hook, run before SIGTERM is sent), then
// DrainDelay, then DrainTimeout, then ExitGrace. A Kubernetes
// terminationGracePeriodSeconds must be at least this plus MinMargin, or
// the kubelet's SIGKILL cuts the requests the drain was waiting for.
func (s Settings) ShutdownBudget(preStop time.Duration) time.Duration {
	return preStop + s.DrainDelay + s.DrainTimeout + ExitGrace
}
