// Package offline lets the examples run without an API key. With
// HOLYSHEEP_API_KEY set they talk to the real endpoint; without it they
// start an embedded llmtest server, an OpenAI-compatible fake LLM, and point
// the client at it.
//
// A service of your own needs none of this: leave llmdrain.Config's APIKey
// and BaseURL empty and llmdrain reads HOLYSHEEP_API_KEY and
// HOLYSHEEP_BASE_URL itself.
package offline

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

// Environment variables that tune the embedded fake LLM. They are ignored
// when HOLYSHEEP_API_KEY is set.
const (
	// EnvLatency is the fake LLM's delay before each answer, a Go
	// duration such as "500ms".
	EnvLatency = "FAKE_LLM_LATENCY"
	// EnvChunkDelay is the fake LLM's delay between streamed words.
	EnvChunkDelay = "FAKE_LLM_CHUNK_DELAY"
	// EnvContextWindow is the fake LLM's context window in tokens (words):
	// longer requests are answered 400 context_length_exceeded, as by the
	// real API. 0 means no limit; unset, llmtest.DefaultContextWindow.
	EnvContextWindow = "FAKE_LLM_CONTEXT_WINDOW"
)

// placeholderKey is what the client sends to the embedded fake LLM, which
// accepts any key. It is not a secret.
const placeholderKey = "offline-placeholder-key"

// Fake holds the embedded fake LLM's defaults; EnvLatency and EnvChunkDelay
// override them.
type Fake struct {
	Latency    time.Duration // before each answer
	ChunkDelay time.Duration // between streamed words
}

// Backend is the LLM endpoint an example talks to.
type Backend struct {
	// Config is the base of the example's llmdrain.Config: empty for the
	// real endpoint (llmdrain reads the environment), pointing at the fake
	// LLM otherwise.
	Config llmdrain.Config
	// Fake is the embedded fake LLM, nil when talking to the real endpoint.
	Fake *llmtest.Server
}

// Open returns the real endpoint when HOLYSHEEP_API_KEY is set, and
// otherwise starts the embedded fake LLM with the defaults in fake. The
// caller must Close the Backend.
func Open(fake Fake) (*Backend, error) {
	if Online() {
		return &Backend{}, nil
	}
	latency, err := envDuration(EnvLatency, fake.Latency)
	if err != nil {
		return nil, err
	}
	chunkDelay, err := envDuration(EnvChunkDelay, fake.ChunkDelay)
	if err != nil {
		return nil, err
	}
	opts := []llmtest.Option{
		llmtest.WithLatency(latency),
		llmtest.WithJitter(0.2),
		llmtest.WithChunkDelay(chunkDelay),
	}
	if v := os.Getenv(EnvContextWindow); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s=%q: want a whole number of tokens, 0 for no limit", EnvContextWindow, v)
		}
		opts = append(opts, llmtest.WithContextWindow(n))
	}
	srv := llmtest.NewServer(opts...)
	return &Backend{
		Config: llmdrain.Config{APIKey: placeholderKey, BaseURL: srv.URL},
		Fake:   srv,
	}, nil
}

// Online reports whether HOLYSHEEP_API_KEY is set, so that the examples
// talk to the real endpoint.
func Online() bool { return os.Getenv(llmdrain.EnvAPIKey) != "" }

// RealEndpoint is the base URL llmdrain uses with an empty Config:
// HOLYSHEEP_BASE_URL, or llmdrain.DefaultBaseURL. It is for display: any
// credentials, query or fragment in it are masked.
func RealEndpoint() string {
	base := os.Getenv(llmdrain.EnvBaseURL)
	if base == "" {
		return llmdrain.DefaultBaseURL
	}
	u, err := url.Parse(base)
	if err != nil {
		return "(unparseable $" + llmdrain.EnvBaseURL + ")"
	}
	if u.User != nil {
		u.User = url.User("xxxxx")
	}
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery, u.ForceQuery = "xxxxx", false
	}
	if u.Fragment != "" {
		u.Fragment, u.RawFragment = "xxxxx", ""
	}
	return u.String()
}

// Online reports whether the backend is the real endpoint.
func (b *Backend) Online() bool { return b.Fake == nil }

// String says which endpoint is used, without any key.
func (b *Backend) String() string {
	if b.Online() {
		return fmt.Sprintf("%s (key from $%s)", RealEndpoint(), llmdrain.EnvAPIKey)
	}
	return fmt.Sprintf("embedded fake LLM at %s ($%s not set)", b.Fake.URL, llmdrain.EnvAPIKey)
}

// Close stops the embedded fake LLM, if any. Close it only after the
// client's calls have drained: it cuts the calls still running.
func (b *Backend) Close() {
	if b.Fake != nil {
		b.Fake.Close()
	}
}

func envDuration(name string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s=%q: want a non-negative duration such as 500ms", name, v)
	}
	return d, nil
}
