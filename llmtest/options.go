package llmtest

import (
	"slices"
	"time"
)

// config collects what the Options set; NewServer copies it into the Server.
type config struct {
	latency    time.Duration
	chunkDelay time.Duration
	jitter     float64
	seed       int64
	seeded     bool
	addr       string
	apiKey     string
	chaos      Chaos
	models     []string
	anyModel   bool
	window     int
	windowSet  bool
	azure      bool
}

// Option configures a Server at construction; see NewServer.
type Option func(*config)

// WithLatency delays every response by d before its headers are written (for
// streams, before the first chunk). The wait is cut short when the client
// gives up or the server closes. Negative values count as zero.
func WithLatency(d time.Duration) Option {
	return func(c *config) { c.latency = max(d, 0) }
}

// WithChunkDelay waits d between consecutive events of a streamed response.
// The default is no delay. Negative values count as zero.
func WithChunkDelay(d time.Duration) Option {
	return func(c *config) { c.chunkDelay = max(d, 0) }
}

// WithJitter varies each latency uniformly within ±frac of its value, drawing
// from the server's seeded random source. frac is clamped to [0, 1].
func WithJitter(frac float64) Option {
	return func(c *config) { c.jitter = min(max(frac, 0), 1) }
}

// WithSeed seeds every random choice the server makes (jitter and chaos), so
// the same seed and the same sequence of requests give the same behaviour.
// Without it the seed comes from the clock.
func WithSeed(seed int64) Option {
	return func(c *config) { c.seed, c.seeded = seed, true }
}

// WithAddr sets the listen address, for example "127.0.0.1:8081". It exists
// to restart an endpoint on the port a closed Server used; the default is
// "127.0.0.1:0", a fresh loopback port.
func WithAddr(addr string) Option {
	return func(c *config) { c.addr = addr }
}

// WithAPIKey makes the server require "Authorization: Bearer <key>" on every
// request and answer 401 with an OpenAI-format error otherwise. Without it
// any credentials, or none, are accepted.
func WithAPIKey(key string) Option {
	return func(c *config) { c.apiKey = key }
}

// WithChaos injects random faults into chat completion requests with the
// probabilities in c. Scripted faults take precedence: chaos only decides
// requests that arrive while the script queue is empty.
func WithChaos(c Chaos) Option {
	return func(cfg *config) { cfg.chaos = c }
}

// DefaultModels are the models a Server serves unless WithModels says
// otherwise: a request for any other is answered 404 model_not_found, as
// the real API answers it.
var DefaultModels = []string{
	"gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3-mini", "o4-mini",
	"gpt-3.5-turbo", "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002",
}

// DefaultContextWindow is the context window, in tokens, unless
// WithContextWindow says otherwise: gpt-4o's. The server counts a word as
// a token.
const DefaultContextWindow = 128000

// WithModels sets the models the server serves and lists in GET
// /v1/models, instead of DefaultModels. With no ids it serves any model
// name, and lists DefaultModels.
func WithModels(ids ...string) Option {
	return func(c *config) { c.models, c.anyModel = slices.Clone(ids), len(ids) == 0 }
}

// WithContextWindow sets the context window in tokens (words, here): a
// chat request whose messages plus its max_completion_tokens (or
// max_tokens) exceed it is answered 400 with code
// "context_length_exceeded", as the real API answers it. 0 means no
// limit. The default is DefaultContextWindow.
func WithContextWindow(tokens int) Option {
	return func(c *config) { c.window, c.windowSet = max(tokens, 0), true }
}

// WithAzure makes the server answer as an Azure OpenAI resource does, for
// clients configured with go-openai's APITypeAzure: Server.URL is the
// resource's root ("http://127.0.0.1:41234", no /v1), chat completions are
// served at POST /openai/deployments/{deployment}/chat/completions and
// embeddings at .../{deployment}/embeddings, each with an api-version
// query parameter (404 without one, as Azure answers), and the deployment
// is the model: it replaces the model named in the body, and must be one
// the server serves. With WithAPIKey the key must come in the "api-key"
// header (Azure's key authentication); a request without it, a bearer
// token included, is answered 401 as Azure answers it. Faults, latency,
// chaos and the counters work as for the OpenAI paths.
func WithAzure() Option {
	return func(c *config) { c.azure = true }
}
