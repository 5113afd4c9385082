package llmdrain

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeKey is recognisable anywhere it might leak.
const fakeKey = "sk-llmdrain-FAKE-7f3a9c-do-not-leak"

func TestNewRejectsBadConfig(t *testing.T) {
	t.Setenv(EnvAPIKey, "")
	t.Setenv(EnvBaseURL, "")
	cases := []struct {
		name  string
		cfg   Config
		field string
		says  string
	}{
		{"no key", Config{}, "APIKey", "set HOLYSHEEP_API_KEY"},
		{"trailing newline", Config{APIKey: fakeKey + "\n"}, "APIKey", "newline"},
		{"inner space", Config{APIKey: "sk-abc def"}, "APIKey", "whitespace"},
		{"control char", Config{APIKey: "sk-abc\x00"}, "APIKey", "non-printable"},
		{"malformed url", Config{APIKey: fakeKey, BaseURL: "://nope"}, "BaseURL", "not a valid URL"},
		{"ftp", Config{APIKey: fakeKey, BaseURL: "ftp://api.example.com/v1"}, "BaseURL", "scheme must be http or https"},
		{"no host", Config{APIKey: fakeKey, BaseURL: "https:///v1"}, "BaseURL", "no host"},
		{"plain http remote", Config{APIKey: fakeKey, BaseURL: "http://api.example.com/v1"}, "BaseURL", "unencrypted"},
		{"credentials", Config{APIKey: fakeKey, BaseURL: "https://user:hunter2@api.example.com/v1"}, "BaseURL", "credentials"},
		{"query", Config{APIKey: fakeKey, BaseURL: "https://api.example.com/v1?x=1"}, "BaseURL", "query"},
		{"bad fallback", Config{APIKey: fakeKey, FallbackURLs: []string{"https://ok.example.com/v1", "http://10.0.0.1/v1"}}, "FallbackURLs[1]", "unencrypted"},
		{"negative concurrency", Config{APIKey: fakeKey, MaxConcurrent: -1}, "MaxConcurrent", "negative"},
		{"negative attempt timeout", Config{APIKey: fakeKey, AttemptTimeout: -time.Second}, "AttemptTimeout", "negative"},
		{"negative retry-after cap", Config{APIKey: fakeKey, MaxRetryAfter: -time.Second}, "MaxRetryAfter", "negative"},
		{"negative failover", Config{APIKey: fakeKey, FailoverAfter: -2}, "FailoverAfter", "negative"},
		{"first-token timeout in ns", Config{APIKey: fakeKey, FirstTokenTimeout: 60}, "FirstTokenTimeout", "wrong unit"},
		{"idle timeout in ns", Config{APIKey: fakeKey, StreamIdleTimeout: 30}, "StreamIdleTimeout", "wrong unit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl, err := New(c.cfg)
			require.Error(t, err)
			assert.Nil(t, cl)
			assert.ErrorIs(t, err, ErrInvalidConfig)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, c.field, ce.Field)
			assert.Contains(t, err.Error(), c.says)
			assert.NotContains(t, err.Error(), "sk-llmdrain-FAKE")
			assert.NotContains(t, err.Error(), "hunter2")
		})
	}
}

func TestNewReportsAllProblems(t *testing.T) {
	t.Setenv(EnvAPIKey, "")
	_, err := New(Config{BaseURL: "ftp://x", MaxConcurrent: -1})
	require.Error(t, err)
	for _, f := range []string{"APIKey", "BaseURL", "MaxConcurrent"} {
		assert.Contains(t, err.Error(), f+":")
	}
}

func TestNewDefaultsAndEnvironment(t *testing.T) {
	t.Setenv(EnvAPIKey, fakeKey)
	t.Setenv(EnvBaseURL, "")
	r, err := resolve(Config{})
	require.NoError(t, err)
	assert.Equal(t, fakeKey, r.APIKey)
	assert.Equal(t, []string{DefaultBaseURL}, r.endpoints)
	assert.Equal(t, DefaultModel, r.Model)
	assert.Equal(t, DefaultMaxRetries, r.MaxRetries)
	assert.Equal(t, DefaultMaxRetryAfter, r.MaxRetryAfter)
	assert.Equal(t, DefaultFailoverAfter, r.FailoverAfter)
	assert.NotNil(t, r.Tracker)
	// Silence is bounded by default: a minute for the first sign of an
	// answer, and between two events of a stream.
	assert.Equal(t, 60*time.Second, r.FirstTokenTimeout)
	assert.Equal(t, 60*time.Second, r.StreamIdleTimeout)
	c, err := New(Config{})
	require.NoError(t, err)
	tr := c.http.Transport.(*transport)
	assert.Equal(t, 60*time.Second, tr.firstTokenTimeout)
	assert.Equal(t, 60*time.Second, tr.idleTimeout)

	t.Setenv(EnvBaseURL, "http://127.0.0.1:9/v1/")
	r, err = resolve(Config{MaxRetries: -1})
	require.NoError(t, err)
	assert.Equal(t, []string{"http://127.0.0.1:9/v1"}, r.endpoints, "trailing slash trimmed")
	assert.Equal(t, 0, r.MaxRetries, "negative means no retries")
	r, err = resolve(Config{FirstTokenTimeout: -1, StreamIdleTimeout: -time.Second})
	require.NoError(t, err)
	assert.Negative(t, r.FirstTokenTimeout, "negative means no bound")
	assert.Negative(t, r.StreamIdleTimeout, "negative means no bound")
	r, err = resolve(Config{FirstTokenTimeout: 5 * time.Minute, StreamIdleTimeout: time.Millisecond})
	require.NoError(t, err)
	assert.Equal(t, 5*time.Minute, r.FirstTokenTimeout)
	assert.Equal(t, time.Millisecond, r.StreamIdleTimeout)

	for _, host := range []string{"localhost", "127.0.0.2", "[::1]", "llm.localhost"} {
		_, err := New(Config{APIKey: fakeKey, BaseURL: "http://" + host + ":8080/v1"})
		assert.NoError(t, err, host)
	}
}

func TestConfigNeverPrintsKey(t *testing.T) {
	cfg := Config{APIKey: fakeKey, BaseURL: "https://api.example.com/v1", Model: "m"}
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d", "%T %v"} {
		outs = append(outs, fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, &cfg))
	}
	outs = append(outs, fmt.Sprintf("%+v", struct{ C Config }{cfg}))
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("cfg", "cfg", cfg)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("cfg", "cfg", cfg, "ptr", &cfg)
	outs = append(outs, buf.String())
	for _, o := range outs {
		assert.NotContains(t, o, "FAKE", "key leaked in %q", o)
	}
	assert.Contains(t, fmt.Sprint(cfg), "[redacted]")
	cfg.FirstTokenTimeout, cfg.StreamIdleTimeout = 90*time.Second, 2*time.Minute
	assert.Contains(t, fmt.Sprint(cfg), "FirstTokenTimeout: 1m30s, StreamIdleTimeout: 2m0s")
	buf.Reset()
	slog.New(slog.NewTextHandler(&buf, nil)).Info("cfg", "cfg", cfg)
	assert.Contains(t, buf.String(), "cfg.first_token_timeout=1m30s cfg.stream_idle_timeout=2m0s")
	assert.Contains(t, buf.String(), "api.example.com")
}

func TestConfigErrorIs(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", &ConfigError{Field: "X", Problem: "y"})
	assert.True(t, errors.Is(err, ErrInvalidConfig))
	assert.True(t, strings.HasPrefix((&ConfigError{Field: "X", Problem: "y"}).Error(), "llmdrain: invalid config: X: y"))
}

// TestEndpointsNormalised checks the one form every use of an endpoint
// compares against.
func TestEndpointsNormalised(t *testing.T) {
	r, err := resolve(Config{APIKey: fakeKey, BaseURL: "HTTPS://API.Example.COM/V1/",
		FallbackURLs: []string{"Http://LOCALHOST:8080//", "https://[FE80::1%25En0]:443/a%2Fb/"}})
	require.NoError(t, err)
	assert.Equal(t, []string{"https://api.example.com/V1", "http://localhost:8080", "https://[fe80::1%25En0]:443/a%2Fb"}, r.endpoints)
	c, err := New(r.Config)
	require.NoError(t, err)
	assert.Equal(t, `llmdrain.Client{BaseURL: "https://api.example.com/V1", Model: "gpt-4o", Fallbacks: [`+
		`{BaseURL: "http://localhost:8080", APIKey: [redacted], Model: ""}, {BaseURL: "https://[fe80::1%25En0]:443/a%2Fb", APIKey: [redacted], Model: ""}]}`, c.String())
	var origins []origin
	for _, tg := range c.http.Transport.(*transport).router.targets {
		origins = append(origins, tg.origin)
	}
	assert.Equal(t, []origin{{"https", "api.example.com"}, {"http", "localhost:8080"}, {"https", "[fe80::1%En0]:443"}}, origins)
}
