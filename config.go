package llmdrain

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
)

// Defaults applied by New to an empty Config.
const (
	// DefaultBaseURL is the HolySheep OpenAI-compatible endpoint.
	DefaultBaseURL = "https://api.holysheep.ai/v1"
	// DefaultModel is the model used when neither Config.Model nor a
	// request names one.
	DefaultModel = "gpt-4o"
	// EnvAPIKey is read when Config.APIKey is empty.
	EnvAPIKey = "HOLYSHEEP_API_KEY"
	// EnvBaseURL is read when Config.BaseURL is empty.
	EnvBaseURL = "HOLYSHEEP_BASE_URL"
	// DefaultFirstTokenTimeout is Config.FirstTokenTimeout when 0: a
	// provider that has sent no sign of an answer for a minute is taken
	// for silent, so that a call against one that never answers is
	// bounded, at about a minute per endpoint, without a caller deadline.
	// Streams get their first event within seconds, reasoning models
	// within tens of seconds; a plain call whose whole generation takes
	// longer (its headers come with the answer) needs a stream (Chat
	// streams) or a larger value.
	DefaultFirstTokenTimeout = 60 * time.Second
	// DefaultStreamIdleTimeout is Config.StreamIdleTimeout when 0. A
	// generation sends its events every few tens of milliseconds; a
	// minute without one is a dead stream, and the proxies in front of
	// most providers (nginx's proxy_read_timeout, cloud load balancers'
	// idle timeouts) cut one at about that anyway.
	DefaultStreamIdleTimeout = 60 * time.Second
)

// ErrInvalidConfig matches every error New returns for a bad Config.
var ErrInvalidConfig = errors.New("llmdrain: invalid config")

// Config configures a Client. The zero value is valid when the API key is
// in $HOLYSHEEP_API_KEY: it talks to DefaultBaseURL with DefaultModel and
// the default retry policy.
//
// Printing a Config (any fmt verb, or slog) never shows the API key, nor
// the credentials, query or fragment of its URLs.
type Config struct {
	// APIKey is sent as a bearer token to the endpoints that use it (the
	// scheme and host of BaseURL, FallbackURLs and the Fallbacks without a
	// key of their own) and nowhere else, redirects included. Empty means
	// $HOLYSHEEP_API_KEY.
	APIKey string
	// BaseURL is the OpenAI-compatible API root, such as
	// "https://api.holysheep.ai/v1". Empty means $HOLYSHEEP_BASE_URL, then
	// DefaultBaseURL. It is used normalised: scheme and host in lower
	// case, without trailing slash.
	//
	// Plain http is accepted for loopback hosts only (a loopback IP,
	// "localhost" or a name under ".localhost"), so the key is never sent
	// in clear over a network, unless InsecurePlainHTTP says otherwise.
	// Loopback attempts use no proxy, whatever the transport's Proxy or
	// the environment says, resolve localhost names to 127.0.0.1 then ::1
	// without asking DNS (RFC 6761), and fail before anything is sent if
	// the connection is not to a loopback address; see HTTPClient for the
	// transports this needs.
	BaseURL string
	// InsecurePlainHTTP accepts plain http to a host that is not loopback
	// for BaseURL and FallbackURLs: a model served inside a cluster or a
	// compose network, such as "http://vllm.default.svc:8000/v1" or
	// "http://ollama:11434/v1". The API key (if the server wants one) then
	// crosses that network unencrypted, readable by anyone who can watch
	// it, and the attempts go through the HTTPClient's transport as it is,
	// proxy settings included; New logs a warning naming each such
	// endpoint once. Set it only for a network you trust. It changes
	// nothing for https or loopback endpoints. Each Fallbacks entry has its
	// own (Target.InsecurePlainHTTP).
	InsecurePlainHTTP bool
	// FallbackURLs are shorthand for Fallbacks that differ from the
	// primary endpoint by their URL only: each is Target{BaseURL: u}. They
	// come before Fallbacks, in order, share the API key and follow
	// BaseURL's rules.
	FallbackURLs []string
	// Fallbacks are the targets a call may be sent to when the primary
	// endpoint (BaseURL, APIKey) is out, in order after FallbackURLs: see
	// Target. Each target has a breaker: after FailoverAfter failed
	// attempts in a row it is out of rotation for a cool-down (Cooldown,
	// growing with each ejection in a row, up to MaxCooldown), then one
	// probe is let through, whose success puts it back. Every attempt
	// goes to the first target, primary first, that admits it; when none
	// does, to the one out longest: every target is never out at once.
	// So traffic leaves a failing primary after FailoverAfter attempts and
	// returns to it, once it has recovered, within MaxCooldown.
	//
	// A stream fails over only before its first byte has reached the
	// caller; nothing is replayed after that.
	Fallbacks []Target
	// Model is the model of Chat, and of the chat and text completion
	// requests that leave it empty: CreateChatCompletion,
	// CreateChatCompletionStream, and the same requests (and
	// CreateCompletion, CreateCompletionStream) made through OpenAI().
	// Other endpoints, embeddings or images for one, take models of
	// other kinds and get no default. Empty means DefaultModel.
	Model string
	// MaxRetries is how many times a failed attempt is retried: 0 means
	// DefaultMaxRetries, a negative value means never.
	MaxRetries int
	// MaxConcurrent bounds the calls in flight at once through this
	// client; further calls wait, bounded by their context, for a slot.
	// 0 means unlimited. A stream holds its slot until it is closed.
	MaxConcurrent int
	// AttemptTimeout bounds one HTTP attempt. For a plain call, the whole
	// exchange: the body of a 2xx JSON answer is read within the attempt
	// (up to 8 MiB), so one that stalls or is cut is a failed attempt; a
	// larger or raw body (file content, speech) read past that point is
	// still bounded, but its timeout ends the call. For a stream, the wait
	// for the first byte of a 2xx body (a long generation is not cut), and
	// the whole exchange for an error status, its body included. An
	// attempt that times out before the answer was handed over is
	// retried; when the last one times out, the call's error matches
	// context.DeadlineExceeded, as net/http's Client.Timeout errors do. 0
	// means no bound but the caller's context, which always bounds the
	// whole call, retries included.
	AttemptTimeout time.Duration
	// FirstTokenTimeout bounds an attempt's wait for the first sign of an
	// answer: for a stream, its first event (a data line; comments,
	// keep-alives and blank lines do not count); for any other call, its
	// response headers (a plain completion's headers come when the whole
	// answer is ready). It counts from the last byte of the request sent,
	// so a slow upload is not cut. An attempt that times out so is tried
	// on the next endpoint rather than the same one; when none is left,
	// the call's error matches context.DeadlineExceeded. It never cuts a
	// stream after its first event nor a body after its headers. Like
	// StreamIdleTimeout it is noticed within a quarter more. 0 means
	// DefaultFirstTokenTimeout (60 s); a negative value means no bound.
	FirstTokenTimeout time.Duration
	// StreamIdleTimeout bounds the gap between two data events of a
	// successful stream, once its first has arrived, while the stream is
	// being read: a longer silence (noticed within a quarter more) ends
	// the stream with an error matching ErrStreamStalled (and
	// io.ErrUnexpectedEOF), releasing the call. Comment lines and
	// keep-alives do not count as events; a caller busy between two Recv
	// is not taken for a stalled server. 0 means
	// DefaultStreamIdleTimeout (60 s); a negative value means no bound.
	StreamIdleTimeout time.Duration
	// HTTPClient supplies the base transport (its Transport, or
	// http.DefaultTransport when nil), redirect policy, cookie jar and
	// timeout. Nil means a client of the Client's own, whose transport is
	// http.DefaultTransport's settings keeping as many idle connections
	// per host as MaxConcurrent (DefaultIdleConnsPerHost when unlimited),
	// rather than Go's 2, so that concurrent calls reuse their connections
	// instead of opening new ones (and TLS handshakes) all the time. It is
	// closed by Client.Shutdown. HTTP/2 is used where the server offers it.
	//
	// Attempts at a plain-http endpoint go through a Clone of the
	// transport, when it is an *http.Transport, with its Proxy removed
	// and its dialer (DialContext, else a net.Dialer like net/http's
	// default; never the deprecated Dial) made to accept loopback
	// connections only; that clone has idle connections of its own,
	// closed by Client.Shutdown. Any other http.RoundTripper cannot be
	// made to do so: plain http through one is accepted for loopback IPs
	// and "localhost" only, which net/http's environment proxy settings
	// never proxy, and trusted to connect them directly; a name under
	// ".localhost" is refused.
	HTTPClient *http.Client
	// Logger receives retries, failovers and drains. Nil means silent.
	Logger *slog.Logger

	// Backoff makes the delay policy for one call's retries. A server's
	// retry-after-ms or Retry-After hint is a floor under it: the wait is
	// the longer of the hint and the next backoff. A policy that returns
	// backoff.Stop ends the retries. Nil means DefaultBackoff.
	Backoff func() backoff.BackOff
	// ShouldRetry decides whether a failed attempt is retried. Nil means
	// DefaultShouldRetry.
	ShouldRetry func(resp *http.Response, err error) bool
	// MaxRetryAfter caps the delay a server may ask for; a larger hint
	// ends the call with the server's error at once. 0 means
	// DefaultMaxRetryAfter.
	MaxRetryAfter time.Duration
	// FailoverAfter is how many consecutive failed attempts against one
	// target (a retried status, a connection error, a timeout) take it out
	// of rotation, moving later attempts to the next target; see
	// Fallbacks. 0 means DefaultFailoverAfter.
	FailoverAfter int
	// Cooldown is how long a target is out of rotation after its first
	// ejection; the n-th ejection in a row lasts n × Cooldown, up to
	// MaxCooldown (one ejection is forgiven for each MaxCooldown the target
	// then works). 0 means DefaultCooldown.
	Cooldown time.Duration
	// MaxCooldown caps a target's time out of rotation, and so bounds how
	// long traffic stays away from a primary that has recovered. 0 means
	// DefaultMaxCooldown, or Cooldown if that is longer.
	MaxCooldown time.Duration
	// Tracker registers this client's calls. Nil means a new Tracker of
	// its own; pass one Tracker to several clients to drain them together.
	Tracker *Tracker
	// RetryBudget bounds each target's retries to this share of the calls
	// sent to it over the last 10 s, plus MinRetriesPerSecond: when a
	// target fails for many calls at once, retries stop adding load to
	// it, and a call whose retry the budget refuses ends at once with its
	// last error, matching ErrRetryBudget. 0 means DefaultRetryBudget
	// (20 %, Finagle's and Linkerd's); a negative value means no budget,
	// every retry MaxRetries allows is made.
	RetryBudget float64
	// MinRetriesPerSecond is the retries per second each target's budget
	// allows whatever the traffic, so a client that makes few calls still
	// retries them. 0 means DefaultMinRetriesPerSecond (10); a negative
	// value means none beyond the RetryBudget share.
	MinRetriesPerSecond float64
	// AdaptiveCeiling bounds each target's adaptive concurrency limit:
	// the attempts in flight to it at once, a limit that halves when the
	// target answers 429 or 503 and grows by one for each limit's worth of
	// clean answers, down to 1 and up to the ceiling. Attempts above it
	// wait, bounded by their context (a drain refuses new calls as
	// always). Latency is no signal: an LLM's follows its output's
	// length. 0 means MaxConcurrent, or DefaultAdaptiveCeiling (256) when
	// that is unlimited; a larger value is cut to MaxConcurrent; a
	// negative value turns the adaptive limit off.
	AdaptiveCeiling int
	// Quota is where attempts draw their requests and tokens from, once a
	// target's x-ratelimit-* headers have told its limits; see Quota.
	// Attempts are paced from those headers: held while the quota they
	// describe would be overdrawn, then spaced evenly at its refill rate,
	// their tokens estimated before sending (the prompt's bytes / 4 plus
	// max_tokens) and corrected with the usage that comes back. A
	// provider that sends no such headers is paced by the adaptive limit
	// and the retry budget alone. Nil
	// means a LocalQuota of the client's own, which paces this process
	// only; a shared Quota (the redisquota module) paces a fleet of
	// replicas that use one key.
	Quota Quota
	// Hooks are told what the client's calls do (see Hooks), and its
	// Tracker's drains. Nil means none, at no cost. With Hooks, streaming
	// chat completions ask for their token usage
	// (stream_options.include_usage): the stream then ends with an event
	// whose choices are empty.
	Hooks *Hooks

	// Prices prices the tokens of the client's answers, by model: the
	// costs of batch tasks and batches, and the budgets (MaxCost,
	// BatchOptions.MaxCost) read it. Load it with LoadPrices or write it
	// in code; llmdrain ships none. Nil means every cost is unknown
	// (Cost.Unknown), never zero. Each price must be finite and not
	// negative.
	Prices Prices
	// MaxCost caps, in US dollars, what the client's chat completion,
	// text completion and embeddings calls may cost together over its
	// life, whichever method makes them (a batch's tasks included). Before
	// each such call its worst case (see BatchOptions.MaxCost) is reserved,
	// and replaced by its real cost once its answer is done (a stream's
	// usage event, which llmdrain asks for). A call whose worst case does
	// not fit in what is neither spent nor reserved by the calls in flight
	// is refused at once with ErrBudgetExceeded, nothing sent; it does not
	// wait for them, one of which could be a stream its own caller holds
	// open. A batch's tasks do wait, for the batch's other tasks. So
	// spending never passes the cap, as far as the reservations bound it.
	// Calls to other endpoints are not priced by the token and are not
	// counted. 0 means no cap; a cap needs Prices.
	MaxCost float64

	// OpenAIConfig, if set, shapes the go-openai ClientConfig the client
	// is built on, after llmdrain has filled it in: OrgID, APIType and
	// APIVersion (Azure OpenAI: openai.APITypeAzure or APITypeAzureAD),
	// AzureModelMapperFunc, AssistantVersion, EmptyMessagesLimit. Tracking,
	// retries, targets and key handling stay llmdrain's:
	//
	//   - It must leave BaseURL and HTTPClient as they are (New rejects a
	//     change: the endpoints are BaseURL and Fallbacks, the transport is
	//     HTTPClient's) and must not replace the whole value (as with
	//     openai.DefaultAzureConfig), which would drop both.
	//   - The key is APIKey's, never the ClientConfig's: llmdrain sends it
	//     itself, to each target's own origin only, as "Authorization:
	//     Bearer KEY", or, with APIType openai.APITypeAzure (or
	//     APITypeCloudflareAzure), as the "api-key: KEY" header Azure wants.
	//     Any other credential header go-openai would set is dropped.
	//
	// With Azure, go-openai puts the deployment, mapped from the request's
	// model, in the URL (/openai/deployments/NAME/...?api-version=V): name
	// the model in requests made through OpenAI(), which get Config.Model
	// in their body only, after the URL is built. A target's Model changes
	// the body's model, not the deployment its URL names.
	OpenAIConfig func(*openai.ClientConfig)
}

// String describes the config with the API keys redacted.
func (c Config) String() string {
	fallbacks := ""
	if c.InsecurePlainHTTP {
		fallbacks = ", InsecurePlainHTTP: true"
	}
	if len(c.Fallbacks) > 0 {
		fallbacks += ", Fallbacks: " + targetsString(c.Fallbacks)
	}
	cost := ""
	if len(c.Prices) > 0 || c.MaxCost != 0 {
		cost = fmt.Sprintf(", Prices: %d models, MaxCost: %v", len(c.Prices), c.MaxCost)
	}
	return fmt.Sprintf("llmdrain.Config{APIKey: %s, BaseURL: %q, FallbackURLs: %q%s, Model: %q, MaxRetries: %d, MaxConcurrent: %d, AttemptTimeout: %v, FirstTokenTimeout: %v, StreamIdleTimeout: %v%s, RetryBudget: %v, MinRetriesPerSecond: %v, AdaptiveCeiling: %d, Quota: %s}",
		redact(c.APIKey), redactURL(c.BaseURL), redactURLs(c.FallbackURLs), fallbacks, c.Model, c.MaxRetries, c.MaxConcurrent, c.AttemptTimeout, c.FirstTokenTimeout, c.StreamIdleTimeout, cost, c.RetryBudget, c.MinRetriesPerSecond, c.AdaptiveCeiling, quotaName(c.Quota))
}

// Format makes every fmt verb (%v, %+v, %#v, %s, %d, ...) print String, so
// the key cannot leak through a verb that would otherwise walk the fields.
func (c Config) Format(f fmt.State, _ rune) { fmt.Fprint(f, c.String()) }

// LogValue gives slog the redacted fields.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("api_key", redact(c.APIKey)),
		slog.String("base_url", redactURL(c.BaseURL)),
		slog.Any("fallback_urls", redactURLs(c.FallbackURLs)),
		slog.Bool("insecure_plain_http", c.InsecurePlainHTTP),
		slog.Any("fallbacks", targetValues(c.Fallbacks)),
		slog.String("model", c.Model),
		slog.Int("max_retries", c.MaxRetries),
		slog.Int("max_concurrent", c.MaxConcurrent),
		slog.Duration("attempt_timeout", c.AttemptTimeout),
		slog.Duration("first_token_timeout", c.FirstTokenTimeout),
		slog.Duration("stream_idle_timeout", c.StreamIdleTimeout),
		slog.Float64("retry_budget", c.RetryBudget),
		slog.Float64("min_retries_per_second", c.MinRetriesPerSecond),
		slog.Int("adaptive_ceiling", c.AdaptiveCeiling),
		slog.String("quota", quotaName(c.Quota)),
		slog.Int("prices", len(c.Prices)),
		slog.Float64("max_cost", c.MaxCost),
	)
}

// quotaName names a Quota by its type only: a shared one may hold a
// connection string with a password.
func quotaName(q Quota) string {
	if q == nil {
		return "nil"
	}
	return fmt.Sprintf("%T", q)
}

func redact(key string) string {
	if key == "" {
		return `""`
	}
	return "[redacted]"
}

func redactURL(s string) string {
	if u, err := url.Parse(s); err == nil {
		return redactedURL(u)
	}
	return "[unparseable]"
}

// redactedURL is u as printed: its user name as well as its password (a
// key pasted as "https://KEY@host" is in the user name), its query (as in
// "?api-key=KEY") and its fragment are replaced by "xxxxx".
func redactedURL(u *url.URL) string {
	v := *u
	if v.User != nil {
		v.User = url.User("xxxxx")
	}
	if v.RawQuery != "" {
		v.RawQuery = "xxxxx"
	}
	if v.Fragment != "" {
		v.Fragment, v.RawFragment = "xxxxx", ""
	}
	return v.String()
}

func redactURLs(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = redactURL(s)
	}
	return out
}

// Target is an endpoint a call may be sent to instead of the primary one
// (Config.BaseURL with Config.APIKey); see Config.Fallbacks. An empty field
// inherits the primary's. Printing a Target (any fmt verb, or slog) never
// shows its key, nor the credentials, query or fragment of its URL.
type Target struct {
	// BaseURL is the target's API root, following Config.BaseURL's
	// rules. Empty means the primary's.
	BaseURL string
	// APIKey is sent as a bearer token to this target's origin (the
	// scheme and host of its BaseURL) only, never to another target's nor
	// on a redirect elsewhere; two targets at one origin each send their
	// own. Empty means the primary's key.
	APIKey string
	// Model is put in the chat and text completion requests sent to this
	// target, in place of the one they name: the response's model field
	// then says which answered. Empty means the request's model is kept
	// (Config.Model when it names none).
	Model string
	// InsecurePlainHTTP accepts a plain-http BaseURL at a host that is not
	// loopback for this target; see Config.InsecurePlainHTTP, whose risk
	// it carries. A target without a BaseURL of its own inherits the
	// primary's setting with its URL.
	InsecurePlainHTTP bool
	// LongContext marks the target as the place for the calls too long for
	// the others: a call that a target without it answers 400 with the
	// error code context_length_exceeded goes on to the LongContext
	// targets, and stays with them, instead of ending with that error.
	// Without any, such a call ends with it at once; it is never retried
	// on the target that gave it. A LongContext target is also a fallback
	// in its turn.
	LongContext bool
}

// String describes the target with its API key redacted.
func (t Target) String() string {
	s := fmt.Sprintf("{BaseURL: %q, APIKey: %s, Model: %q", redactURL(t.BaseURL), redact(t.APIKey), t.Model)
	if t.InsecurePlainHTTP {
		s += ", InsecurePlainHTTP: true"
	}
	if t.LongContext {
		s += ", LongContext: true"
	}
	return s + "}"
}

// Format makes every fmt verb print String.
func (t Target) Format(f fmt.State, _ rune) { fmt.Fprint(f, t.String()) }

// LogValue gives slog the redacted fields.
func (t Target) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("base_url", redactURL(t.BaseURL)),
		slog.String("api_key", redact(t.APIKey)),
		slog.String("model", t.Model),
		slog.Bool("insecure_plain_http", t.InsecurePlainHTTP),
		slog.Bool("long_context", t.LongContext),
	)
}

func targetsString(ts []Target) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.String()
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func targetValues(ts []Target) []slog.Value {
	vs := make([]slog.Value, len(ts))
	for i, t := range ts {
		vs[i] = t.LogValue()
	}
	return vs
}

// ConfigError describes one problem New found in a Config. It matches
// ErrInvalidConfig with errors.Is. Its text names the field and never
// contains the API key.
type ConfigError struct {
	Field   string // the Config field, such as "APIKey" or "FallbackURLs[1]"
	Problem string // what is wrong and how to fix it
}

// Error returns "llmdrain: invalid config: <Field>: <Problem>".
func (e *ConfigError) Error() string {
	return fmt.Sprintf("llmdrain: invalid config: %s: %s", e.Field, e.Problem)
}

// Is reports whether target is ErrInvalidConfig.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// resolved is a validated Config with its defaults applied.
type resolved struct {
	Config
	endpoints []string // BaseURL, FallbackURLs then Fallbacks, normalised by checkURL
	targets   []Target // the same, with every field inherited filled in
	// apiKeyHeader sends the key as "api-key: KEY" (Azure) rather than
	// as a bearer token; New sets it from the go-openai ClientConfig.
	apiKeyHeader bool
}

// resolve applies environment and defaults and validates. All problems are
// reported together, joined, each a *ConfigError.
func resolve(cfg Config) (resolved, error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &ConfigError{Field: field, Problem: fmt.Sprintf(format, args...)})
	}

	if cfg.APIKey == "" {
		cfg.APIKey = os.Getenv(EnvAPIKey)
	}
	if cfg.APIKey == "" {
		bad("APIKey", "empty; set %s or Config.APIKey", EnvAPIKey)
	} else if p := keyProblem(cfg.APIKey); p != "" {
		bad("APIKey", "%s", p)
	}

	if cfg.BaseURL == "" {
		cfg.BaseURL = os.Getenv(EnvBaseURL)
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = DefaultBaseURL
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Transport: defaultTransport(cfg.MaxConcurrent, 1+len(cfg.FallbackURLs)+len(cfg.Fallbacks))}
	}
	// Whether plain-http attempts can be kept off proxies and on loopback;
	// see Config.HTTPClient.
	_, checked := baseTransport(cfg.HTTPClient).(*http.Transport)
	var r resolved
	ep, err := checkURL(cfg.BaseURL, checked, cfg.InsecurePlainHTTP, "InsecurePlainHTTP")
	if err != "" {
		bad("BaseURL", "%s", err)
	}
	r.endpoints = append(r.endpoints, ep)
	r.targets = append(r.targets, Target{BaseURL: ep, APIKey: cfg.APIKey, InsecurePlainHTTP: cfg.InsecurePlainHTTP})
	for i, u := range cfg.FallbackURLs {
		ep, err := checkURL(u, checked, cfg.InsecurePlainHTTP, "InsecurePlainHTTP")
		if err != "" {
			bad(fmt.Sprintf("FallbackURLs[%d]", i), "%s", err)
		}
		r.endpoints = append(r.endpoints, ep)
		r.targets = append(r.targets, Target{BaseURL: ep, APIKey: cfg.APIKey, InsecurePlainHTTP: cfg.InsecurePlainHTTP})
	}
	for i, tg := range cfg.Fallbacks {
		field := fmt.Sprintf("Fallbacks[%d]", i)
		if tg.BaseURL == "" {
			tg.BaseURL = r.endpoints[0]
			tg.InsecurePlainHTTP = cfg.InsecurePlainHTTP
		} else {
			ep, err := checkURL(tg.BaseURL, checked, tg.InsecurePlainHTTP, field+".InsecurePlainHTTP")
			if err != "" {
				bad(field+".BaseURL", "%s", err)
			}
			tg.BaseURL = ep
		}
		if tg.APIKey == "" {
			tg.APIKey = cfg.APIKey
		} else if p := keyProblem(tg.APIKey); p != "" {
			bad(field+".APIKey", "%s", p)
		}
		if strings.IndexFunc(tg.Model, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
			bad(field+".Model", "contains non-printable characters")
		}
		r.endpoints = append(r.endpoints, tg.BaseURL)
		r.targets = append(r.targets, tg)
	}

	if cfg.Model == "" {
		cfg.Model = DefaultModel
	}
	switch {
	case cfg.MaxRetries == 0:
		cfg.MaxRetries = DefaultMaxRetries
	case cfg.MaxRetries < 0:
		cfg.MaxRetries = 0
	}
	if cfg.MaxConcurrent < 0 {
		bad("MaxConcurrent", "negative (%d); use 0 for unlimited", cfg.MaxConcurrent)
	}
	if cfg.AttemptTimeout < 0 {
		bad("AttemptTimeout", "negative (%v); use 0 for no per-attempt bound", cfg.AttemptTimeout)
	}
	for _, f := range []struct {
		name string
		d    *time.Duration
		def  time.Duration
	}{{"FirstTokenTimeout", &cfg.FirstTokenTimeout, DefaultFirstTokenTimeout}, {"StreamIdleTimeout", &cfg.StreamIdleTimeout, DefaultStreamIdleTimeout}} {
		if *f.d > 0 && *f.d < minWatchdogLimit {
			bad(f.name, "%v is below %v, a duration in the wrong unit (write 60 * time.Second); use 0 for the default %v, a negative value for no bound", *f.d, minWatchdogLimit, f.def)
		}
		*f.d = watchdogLimit(*f.d, f.def)
	}
	// duration applies a default to an unset duration and rejects a
	// negative one.
	duration := func(field string, d *time.Duration, def time.Duration) {
		switch {
		case *d < 0:
			bad(field, "negative (%v); use 0 for the default %v", *d, def)
		case *d == 0:
			*d = def
		}
	}
	duration("MaxRetryAfter", &cfg.MaxRetryAfter, DefaultMaxRetryAfter)
	switch {
	case cfg.FailoverAfter < 0:
		bad("FailoverAfter", "negative (%d); use 0 for the default %d", cfg.FailoverAfter, DefaultFailoverAfter)
	case cfg.FailoverAfter == 0:
		cfg.FailoverAfter = DefaultFailoverAfter
	}
	duration("Cooldown", &cfg.Cooldown, DefaultCooldown)
	switch {
	case cfg.MaxCooldown < 0:
		bad("MaxCooldown", "negative (%v); use 0 for the default %v", cfg.MaxCooldown, DefaultMaxCooldown)
	case cfg.MaxCooldown == 0:
		cfg.MaxCooldown = max(DefaultMaxCooldown, cfg.Cooldown)
	case cfg.MaxCooldown < cfg.Cooldown:
		bad("MaxCooldown", "%v is shorter than Cooldown (%v)", cfg.MaxCooldown, cfg.Cooldown)
	}
	if cfg.Backoff == nil {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.ShouldRetry == nil {
		cfg.ShouldRetry = DefaultShouldRetry
	}
	if cfg.Tracker == nil {
		cfg.Tracker = NewTracker()
	}
	if cfg.Quota == nil {
		cfg.Quota = new(LocalQuota)
	}
	for _, f := range []struct {
		name string
		v    *float64
		def  float64
	}{{"RetryBudget", &cfg.RetryBudget, DefaultRetryBudget}, {"MinRetriesPerSecond", &cfg.MinRetriesPerSecond, DefaultMinRetriesPerSecond}} {
		switch v := *f.v; {
		case math.IsNaN(v) || math.IsInf(v, 0):
			bad(f.name, "%v is not a number; use 0 for the default %v, a negative value for none", v, f.def)
		case v > 10:
			bad(f.name, "%v is no bound (%s is a share of the calls, 0.2 for 20 %%, or retries per second); use a negative value for none", v, f.name)
		case v == 0:
			*f.v = f.def
		}
	}
	switch {
	case cfg.AdaptiveCeiling == 0 && cfg.MaxConcurrent > 0:
		cfg.AdaptiveCeiling = cfg.MaxConcurrent
	case cfg.AdaptiveCeiling == 0:
		cfg.AdaptiveCeiling = DefaultAdaptiveCeiling
	case cfg.AdaptiveCeiling > 0 && cfg.MaxConcurrent > 0:
		cfg.AdaptiveCeiling = min(cfg.AdaptiveCeiling, cfg.MaxConcurrent)
	}
	for _, name := range slices.Sorted(maps.Keys(cfg.Prices)) {
		pr := cfg.Prices[name]
		for _, f := range []struct {
			field string
			v     float64
		}{{"Input", pr.Input}, {"CachedInput", pr.CachedInput}, {"Output", pr.Output}} {
			if !(f.v >= 0) || f.v > MaxPrice {
				bad(fmt.Sprintf("Prices[%q].%s", name, f.field), "%v is not a price in US dollars per million tokens (0 to %g)", f.v, float64(MaxPrice))
			}
		}
		if pr.MaxOutput < 0 {
			bad(fmt.Sprintf("Prices[%q].MaxOutput", name), "negative (%d); use 0 for unknown", pr.MaxOutput)
		}
	}
	switch {
	case !(cfg.MaxCost >= 0) || cfg.MaxCost > maxBudget:
		bad("MaxCost", "%v is not a budget in US dollars (0 to %g); use 0 for no cap", cfg.MaxCost, float64(maxBudget))
	case cfg.MaxCost > 0 && len(cfg.Prices) == 0:
		bad("MaxCost", "a cap needs Prices, to know what calls cost")
	}
	r.Config = cfg
	return r, errors.Join(errs...)
}

// maxBudget is the largest budget accepted, in US dollars: budgets are
// kept in picodollars in an int64.
const maxBudget = 1e6

// watchdogLimit resolves a watchdog's timeout: 0 is the default, a
// negative value off (kept negative, so that a resolved Config prints what
// it does).
func watchdogLimit(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// minWatchdogLimit is the least positive watchdog timeout accepted: less is
// a duration given in the wrong unit (FirstTokenTimeout: 60 is 60 ns).
const minWatchdogLimit = time.Millisecond

// keyProblem says what is wrong with a non-empty API key, or "".
func keyProblem(key string) string {
	switch {
	case strings.IndexFunc(key, unicode.IsSpace) >= 0:
		return "contains whitespace or a line break (a key written with echo into a secret ends in a newline; use printf or echo -n)"
	case strings.IndexFunc(key, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
		return "contains non-printable characters"
	}
	return ""
}

// checkURL returns an endpoint URL normalised, and what is wrong with it,
// or "". The message shows the URL with any password redacted. checked says
// whether plain-http attempts go through a transport llmdrain keeps off
// proxies and on loopback; insecure whether plain http to other hosts is
// accepted, which the field optIn sets.
//
// The normalised form, scheme and host in lower case and no trailing
// slash, is the one every use compares against: go-openai builds request
// URLs from it, and failover and the key's origins match them to it.
func checkURL(s string, checked, insecure bool, optIn string) (string, string) {
	u, err := url.Parse(s)
	if err != nil {
		return s, "not a valid URL"
	}
	shown := redactedURL(u)
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return s, fmt.Sprintf("%q: scheme must be http or https", shown)
	case u.Host == "" || u.Hostname() == "":
		return s, fmt.Sprintf("%q: no host", shown)
	case u.User != nil:
		return s, fmt.Sprintf("%q: must not contain credentials; use APIKey", shown)
	case u.RawQuery != "" || u.ForceQuery || strings.Contains(s, "#"):
		// Even an empty "?" or "#": paths are appended to the URL as a
		// string, and would end up in the query or fragment.
		return s, fmt.Sprintf("%q: must not have a query or fragment", shown)
	case u.Scheme == "http" && !isLoopback(u.Hostname()) && !insecure:
		return s, fmt.Sprintf("%q: plain http would send the API key unencrypted over the network; use https, or, for a host on a network you trust (a cluster service, a compose container), set %s: true", shown, optIn)
	case u.Scheme == "http" && !checked && isLocalhostName(u.Hostname()) && !strings.EqualFold(u.Hostname(), "localhost"):
		return s, fmt.Sprintf("%q: plain http to a name under .localhost needs HTTPClient.Transport to be an *http.Transport (or nil), so that llmdrain can keep the connection off proxies and DNS; use 127.0.0.1, localhost or https", shown)
	}
	return normalizeURL(u), ""
}

// normalizeURL lower-cases u's host (but an IPv6 zone, which names an
// interface) and drops its path's trailing slashes; url.Parse has
// lower-cased the scheme already.
func normalizeURL(u *url.URL) string {
	v := *u
	host, zone, _ := strings.Cut(v.Host, "%")
	v.Host = strings.ToLower(host)
	if zone != "" {
		v.Host += "%" + zone
	}
	v.Path = strings.TrimRight(v.Path, "/")
	v.RawPath = strings.TrimRight(v.RawPath, "/")
	return v.String()
}

func isLoopback(host string) bool {
	if isLocalhostName(host) {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// isLocalhostName reports whether host is "localhost" or a name under it,
// which RFC 6761 reserves for loopback.
func isLocalhostName(host string) bool {
	return strings.EqualFold(host, "localhost") || strings.HasSuffix(strings.ToLower(host), ".localhost")
}

// DefaultIdleConnsPerHost is how many idle connections per host the
// transport of a Client without Config.HTTPClient keeps when MaxConcurrent
// is unlimited (with a bound, as many as it).
const DefaultIdleConnsPerHost = 64

// defaultTransport is the transport of a Client without Config.HTTPClient:
// http.DefaultTransport's settings, but keeping as many idle connections
// per host as calls may run at once. Go's default keeps 2, so calls at a
// concurrency of 32 close and reopen connections all the time, leaving
// thousands of sockets in TIME_WAIT and paying a TLS handshake each.
// HTTP/2 is used where the server offers it (ForceAttemptHTTP2, as
// http.DefaultTransport).
func defaultTransport(maxConcurrent, targets int) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	perHost := DefaultIdleConnsPerHost
	if maxConcurrent > 0 {
		perHost = maxConcurrent
	}
	t.MaxIdleConnsPerHost = perHost
	t.MaxIdleConns = max(t.MaxIdleConns, perHost*targets)
	t.ForceAttemptHTTP2 = true
	return t
}

// baseTransport is the transport under hc: its own, or
// http.DefaultTransport.
func baseTransport(hc *http.Client) http.RoundTripper {
	if hc.Transport != nil {
		return hc.Transport
	}
	return http.DefaultTransport
}
