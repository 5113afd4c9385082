package settings

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
	assert.Equal(t, Settings{Addr: ":8080", DrainDelay: 0, DrainTimeout: 60 * time.Second, LogLevel: slog.LevelInfo}, s)

	s, err = FromEnv(env(map[string]string{EnvAddr: "", EnvDrainTimeout: ""}))
	require.NoError(t, err)
	assert.Equal(t, ":8080", s.Addr, "empty means unset")
	assert.Equal(t, DefaultDrainTimeout, s.DrainTimeout)
}

func TestFromEnv(t *testing.T) {
	s, err := FromEnv(env(map[string]string{
		EnvAddr: "127.0.0.1:0", EnvDrainDelay: "5s", EnvDrainTimeout: "90s", EnvLogLevel: "debug",
	}))
	require.NoError(t, err)
	assert.Equal(t, Settings{Addr: "127.0.0.1:0", DrainDelay: 5 * time.Second, DrainTimeout: 90 * time.Second, LogLevel: slog.LevelDebug}, s)
}

func TestFromEnvReportsEveryProblem(t *testing.T) {
	_, err := FromEnv(env(map[string]string{
		EnvDrainDelay: "-1s", EnvDrainTimeout: "0s", EnvLogLevel: "loud",
	}))
	require.Error(t, err)
	for _, want := range []string{"DRAIN_DELAY", "DRAIN_TIMEOUT", "LOG_LEVEL"} {
		assert.Contains(t, err.Error(), want)
	}
	_, err = FromEnv(env(map[string]string{EnvDrainTimeout: "60"}))
	assert.ErrorContains(t, err, "not a duration")
}

func TestShutdownBudget(t *testing.T) {
	s := Settings{DrainDelay: 2 * time.Second, DrainTimeout: 60 * time.Second}
	assert.Equal(t, 5*time.Second+2*time.Second+60*time.Second+ExitGrace, s.ShutdownBudget(5*time.Second))
}
