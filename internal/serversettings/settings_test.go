package serversettings

import (
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func env(kv map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := kv[k]; return v, ok }
}

func TestDefaults(t *testing.T) {
	s, err := FromEnv(env(nil))
	require.NoError(t, err)
	assert.Equal(t, Settings{
		Addr: ":8080", DrainDelay: 0, DrainTimeout: 60 * time.Second, LogLevel: slog.LevelInfo,
		MaxInFlight: 64, MaxBodyBytes: 256 << 10, AllowedModels: []string{"gpt-4o"}, MaxOutputTokens: 1024,
		HeaderTimeout: 5 * time.Second, BodyTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute,
	}, s)

	s, err = FromEnv(env(map[string]string{EnvAddr: "", EnvDrainTimeout: ""}))
	require.NoError(t, err)
	assert.Equal(t, ":8080", s.Addr, "empty means unset")
	assert.Equal(t, DefaultDrainTimeout, s.DrainTimeout)
}

func TestFromEnv(t *testing.T) {
	s, err := FromEnv(env(map[string]string{
		EnvAddr: "127.0.0.1:0", EnvDrainDelay: "5s", EnvDrainTimeout: "90s", EnvLogLevel: "debug",
		EnvMaxInFlight: "8", EnvMaxBodyBytes: "1024", EnvAllowedModels: " gpt-4o-mini, gpt-4o ,", EnvMaxOutputTokens: "50",
		EnvHeaderTimeout: "1s", EnvBodyTimeout: "2s", EnvWriteTimeout: "3s", EnvIdleTimeout: "4s",
		EnvMetricsAddr: "127.0.0.1:9464", EnvMetricsLinger: "2s",
	}))
	require.NoError(t, err)
	assert.Equal(t, Settings{
		Addr: "127.0.0.1:0", DrainDelay: 5 * time.Second, DrainTimeout: 90 * time.Second, LogLevel: slog.LevelDebug,
		MaxInFlight: 8, MaxBodyBytes: 1024, AllowedModels: []string{"gpt-4o-mini", "gpt-4o"}, MaxOutputTokens: 50,
		HeaderTimeout: time.Second, BodyTimeout: 2 * time.Second, WriteTimeout: 3 * time.Second, IdleTimeout: 4 * time.Second,
		MetricsAddr: "127.0.0.1:9464", MetricsLinger: 2 * time.Second,
	}, s)
}

func TestFromEnvReportsEveryProblem(t *testing.T) {
	_, err := FromEnv(env(map[string]string{
		EnvDrainDelay: "-1s", EnvDrainTimeout: "0s", EnvLogLevel: "loud",
		EnvMaxInFlight: "0", EnvMaxBodyBytes: "lots", EnvAllowedModels: " , ", EnvMaxOutputTokens: "-3",
		EnvWriteTimeout: "0s", EnvMetricsLinger: "-1s",
	}))
	require.Error(t, err)
	for _, want := range []string{"DRAIN_DELAY", "DRAIN_TIMEOUT", "LOG_LEVEL", "MAX_IN_FLIGHT", "MAX_BODY_BYTES", "ALLOWED_MODELS", "MAX_OUTPUT_TOKENS", "WRITE_TIMEOUT", "METRICS_LINGER"} {
		assert.Contains(t, err.Error(), want)
	}
	_, err = FromEnv(env(map[string]string{EnvDrainTimeout: "60"}))
	assert.ErrorContains(t, err, "not a duration")
}

func TestShutdownBudget(t *testing.T) {
	s := Settings{DrainDelay: 2 * time.Second, DrainTimeout: 60 * time.Second, MetricsLinger: 3 * time.Second}
	assert.Equal(t, 5*time.Second+2*time.Second+60*time.Second+3*time.Second+ExitGrace, s.ShutdownBudget(5*time.Second))
}
