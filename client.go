package llmdrain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"golang.org/x/sync/semaphore"

	"github.com/llmdrain/llmdrain/internal/aimd"
	"github.com/llmdrain/llmdrain/internal/breaker"
	"github.com/llmdrain/llmdrain/internal/pacing"
	"github.com/llmdrain/llmdrain/internal/retrybudget"
	"github.com/llmdrain/llmdrain/internal/watchdog"
)

// ErrEmptyResponse is returned by Chat when the API answered without any
// choice to take the text from.
var ErrEmptyResponse = errors.New("llmdrain: response has no choices")

// ErrEmptyPrompt is returned by Chat for an empty prompt, before any call.
var ErrEmptyPrompt = errors.New("llmdrain: empty prompt")

// Client calls an OpenAI-compatible API through go-openai, with every call
// tracked for draining and retried per the Config. It is safe for
// concurrent use. Create it with New; the zero Client is not usable.
type Client struct {
	retry   chatRetry
	oa      *openai.Client
	public  *openai.Client // OpenAI()'s: oa with Config.Model as default
	http    *http.Client
	tracker *Tracker
	cost    *costing
	model   string
	hooks   *Hooks // nil: none
	target  string // the first target's base URL, for hooks
	base    string // primary endpoint, for String
	// fallbacks prints the fallback targets for String, keys redacted;
	// empty: none. (A []Target field would show them under %#v: fmt
	// does not call the Format method of an unexported field.)
	fallbacks string
}

// New validates cfg, applies its defaults and environment, and returns a
// Client. Every problem found is reported, joined; each matches
// ErrInvalidConfig and can be taken out with errors.As as a *ConfigError.
// No error text contains the API key.
func New(cfg Config) (*Client, error) {
	r, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	cost := newCosting(r)
	tr := &transport{
		tracker:        r.Tracker,
		policy:         retryPolicy{maxRetries: r.MaxRetries, maxRetryAfter: r.MaxRetryAfter, newBackoff: r.Backoff},
		shouldRetry:    r.ShouldRetry,
		attemptTimeout: r.AttemptTimeout,
		logger:         r.Logger,
		hooks:          r.Hooks,
		cost:           cost,
		model:          r.Model,
		apiError:       envelopeError,

		firstTokenTimeout: r.FirstTokenTimeout,
		idleTimeout:       r.StreamIdleTimeout,
		clock:             watchdog.Real,
	}
	if tr.hooks == nil && cost.budget != nil {
		tr.hooks = &Hooks{} // observed without events: see transport.hooks
	}
	hc := &http.Client{
		Transport:     tr,
		CheckRedirect: r.HTTPClient.CheckRedirect,
		Jar:           r.HTTPClient.Jar,
		Timeout:       r.HTTPClient.Timeout,
	}
	// No key for go-openai: the transport adds it, to the endpoints only.
	oc := openai.DefaultConfig("")
	oc.BaseURL = r.endpoints[0]
	do := &refusalDoer{hc: hc}
	oc.HTTPClient = do
	if r.OpenAIConfig != nil {
		r.OpenAIConfig(&oc)
		if oc.BaseURL != r.endpoints[0] || oc.HTTPClient != openai.HTTPDoer(do) {
			return nil, errors.Join(&ConfigError{Field: "OpenAIConfig", Problem: "changed the ClientConfig's BaseURL or HTTPClient, which llmdrain owns; set Config.BaseURL, Config.Fallbacks and Config.HTTPClient instead"})
		}
	}
	// Azure wants the key in an api-key header rather than as a bearer
	// token; go-openai would set it, empty, and the call fills it in.
	r.apiKeyHeader = oc.APIType == openai.APITypeAzure || oc.APIType == openai.APITypeCloudflareAzure
	tr.router = newRouter(r, nil)
	r.Tracker.addHooks(r.Hooks)
	var (
		origins []origin
		keys    []secret
	)
	for _, tg := range tr.router.targets {
		origins = append(origins, tg.origin)
		keys = append(keys, tg.key)
	}
	warnInsecure(r.Logger, tr.router.targets)
	tr.router.onEject = func(tg *target, d time.Duration) {
		tr.warn(context.Background(), "llmdrain: target out of rotation", "endpoint", tg.host(), "model", tg.model, "cooldown", d)
	}
	tr.router.onRestore = func(tg *target) {
		tr.log(context.Background(), "llmdrain: target back in rotation", "endpoint", tg.host(), "model", tg.model)
	}
	var quotaDown atomic.Bool
	for _, tg := range tr.router.targets {
		g := &gate{pacer: pacing.New(nil), quota: r.Quota, key: quotaKey(tg.origin, tg.key), base: tg.base, quotaDown: &quotaDown, log: tr.log}
		if r.AdaptiveCeiling > 0 {
			g.limit = aimd.New(r.AdaptiveCeiling)
		}
		if r.RetryBudget > 0 || r.MinRetriesPerSecond > 0 {
			g.budget = retrybudget.New(max(r.RetryBudget, 0), max(r.MinRetriesPerSecond, 0), nil)
		}
		tg.gate = g
	}
	base := baseTransport(r.HTTPClient)
	_, tr.shareHeaders = base.(*http.Transport)
	tr.base = newKeyGuard(base, origins, keys)
	if r.MaxConcurrent > 0 {
		tr.sem = semaphore.NewWeighted(int64(r.MaxConcurrent))
	}
	fallbacks := ""
	if len(r.targets) > 1 {
		fallbacks = targetsString(r.targets[1:])
	}
	// OpenAI()'s client is the same but for the default model, which
	// Client's own methods set on the request, costing nothing.
	pc := oc
	phc := *hc
	phc.Transport = &modelDefault{next: tr, model: r.Model}
	pc.HTTPClient = &refusalDoer{hc: &phc}
	return &Client{
		retry:     chatRetry{policy: tr.policy, shouldRetry: tr.shouldRetry, logger: tr.logger},
		oa:        openai.NewClientWithConfig(oc),
		public:    openai.NewClientWithConfig(pc),
		http:      hc,
		tracker:   r.Tracker,
		cost:      cost,
		model:     r.Model,
		hooks:     r.Hooks,
		target:    r.endpoints[0],
		base:      redactURL(r.endpoints[0]),
		fallbacks: fallbacks,
	}, nil
}

// refusalDoer is the http.Client go-openai is given. A call refused with
// ErrDraining sent nothing, so it returns ErrDraining as it is, without the
// *url.Error that would name a URL ("Post \"https://...\": ...") as if a
// request had gone there; every other error is the http.Client's.
type refusalDoer struct{ hc *http.Client }

func (d *refusalDoer) Do(req *http.Request) (*http.Response, error) {
	resp, err := d.hc.Do(req)
	if ue, ok := err.(*url.Error); ok && ue.Err == ErrDraining {
		return nil, ErrDraining
	}
	return resp, err
}

// warnInsecure logs, once per endpoint, each plain-http target that is not
// loopback (Config.InsecurePlainHTTP): its key crosses a network in clear.
func warnInsecure(logger *slog.Logger, targets []*target) {
	if logger == nil {
		return
	}
	var seen []string
	for _, tg := range targets {
		if tg.origin.scheme != "http" || isLoopback((&url.URL{Host: tg.origin.host}).Hostname()) || slices.Contains(seen, tg.origin.host) {
			continue
		}
		seen = append(seen, tg.origin.host)
		logger.Warn("llmdrain: plain http to a host that is not loopback (InsecurePlainHTTP): the API key and the prompts cross the network unencrypted",
			"endpoint", tg.host(), "target", tg.index)
	}
}

// newRouter makes the router of r's targets, their breakers reading now
// (nil: time.Now). A single target gets no breaker: there is nowhere else
// to go.
func newRouter(r resolved, now func() time.Time) *router {
	rt := &router{}
	for _, t := range r.targets {
		u, err := url.Parse(t.BaseURL) // valid: resolve checked it
		if err != nil {
			continue
		}
		tg := &target{index: int32(len(rt.targets)), base: t.BaseURL, origin: origin{scheme: u.Scheme, host: u.Host},
			key: secret(t.APIKey), model: t.Model, long: t.LongContext}
		if tg.key != "" {
			tg.bearer = "Bearer " + tg.key
			tg.authHeader, tg.authz = "Authorization", []string{string(tg.bearer)}
			if r.apiKeyHeader {
				tg.authHeader, tg.authz = "Api-Key", []string{string(tg.key)}
			}
		}
		if len(r.targets) > 1 {
			p := breaker.Policy{Threshold: r.FailoverAfter, Base: r.Cooldown, Max: r.MaxCooldown, Now: now}
			if h := r.Hooks; h != nil && h.TargetChange != nil {
				p.OnChange = func(ch breaker.Change) {
					h.TargetChange(TargetChangeInfo{Target: tg.base, From: targetState(ch.From), To: targetState(ch.To),
						Ejections: ch.Ejections, Cooldown: ch.Cooldown})
				}
			}
			tg.breaker = breaker.New(p)
		}
		if tg.key != "" && !slices.Contains(rt.keys, tg.key) {
			rt.keys = append(rt.keys, tg.key)
		}
		rt.hasLong = rt.hasLong || tg.long
		rt.targets = append(rt.targets, tg)
	}
	return rt
}

// targetState names a breaker's state as TargetChangeInfo does.
func targetState(s breaker.State) TargetState {
	switch s {
	case breaker.Open:
		return TargetEjected
	case breaker.HalfOpen:
		return TargetProbing
	}
	return TargetHealthy
}

// Chat sends prompt as a single user message to the configured model and
// returns the text of the first choice. It is the one-call path: tracked,
// retried and refused with ErrDraining once a drain has begun.
//
// It streams the answer under the hood and returns it whole, so the
// watchdogs of Config.FirstTokenTimeout and Config.StreamIdleTimeout
// protect it, and a long answer is not cut by the first of them (a plain
// completion's headers come only once the whole answer is ready). Nothing
// reaches the caller before the end, so an answer cut, stalled or
// malformed mid-way is asked for again, whole, within the same limits as
// any retry: MaxRetries counts every attempt of the call, the backoff and
// the deadlines apply, and none is made once a drain has begun. When the
// retries run out the error is a *RetryError with the attempts made,
// wrapping the last failure (matching io.ErrUnexpectedEOF for a cut,
// ErrStreamStalled, ErrMalformedEvent). An error event in the stream is the
// server's answer, returned as it is (an *openai.APIError), not retried.
// A successful answer that is no event stream (a server that ignores
// "stream": true) is asked for again as a plain completion.
func (c *Client) Chat(ctx context.Context, prompt string) (string, error) {
	if prompt == "" {
		return "", ErrEmptyPrompt
	}
	if c.tracker.Draining() {
		if c.hooks != nil {
			refused(c.hooks, CallStartInfo{Operation: OpChat, Model: c.model, Stream: true, Target: c.target})
		}
		return "", ErrDraining
	}
	req := openai.ChatCompletionRequest{
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: prompt}},
	}
	// The record counts the attempts of every stream the call makes, so
	// that the transport's retries and Chat's own share MaxRetries.
	rec := callRecordOf(ctx)
	if rec == nil {
		ctx, rec = withCallRecord(ctx)
	}
	var bo backoff.BackOff
	for {
		text, whole, err := c.chatOnce(ctx, req)
		if err == nil || !whole || ctx.Err() != nil || !c.retry.shouldRetry(nil, err) {
			if err != nil && ctx.Err() != nil {
				err = callError(ctx, err)
			}
			return text, err
		}
		attempts := int(rec.attempts.Load())
		dl, _ := ctx.Deadline()
		if ddl, ok := c.tracker.drainDeadline(); ok && (dl.IsZero() || ddl.Before(dl)) {
			dl = ddl
		}
		wait, st := c.retry.policy.decide(time.Now(), attempts, nil, &bo, dl)
		if st == nil && c.tracker.Draining() {
			st = &stop{why: "not retried: a drain began"}
		}
		if st != nil {
			if st.deadline {
				noteDeadlineCut(ctx, c.tracker)
			}
			return "", &RetryError{Attempts: attempts, Reason: st.why, Err: err}
		}
		if c.retry.logger != nil {
			c.retry.logger.InfoContext(ctx, "llmdrain: retrying the whole answer", "attempt", attempts, "wait", wait, "reason", err.Error())
		}
		start := time.Now()
		err = sleep(ctx, wait)
		if h := c.hooks; h != nil && h.Waited != nil && wait > 0 {
			h.Waited(WaitInfo{Reason: WaitBackoff, Duration: time.Since(start)})
		}
		if err != nil {
			return "", callError(ctx, err)
		}
	}
}

// chatRetry is what Chat needs of the transport's retry policy to retry
// a whole answer; the transport itself, which holds the key, is not kept.
type chatRetry struct {
	policy      retryPolicy
	shouldRetry func(*http.Response, error) bool
	logger      *slog.Logger
}

// chatOnce makes one streamed call of Chat and reads its answer whole. whole
// reports that the call failed after its answer began, a failure the
// transport could not retry: the whole call may be.
func (c *Client) chatOnce(ctx context.Context, req openai.ChatCompletionRequest) (text string, whole bool, err error) {
	s, err := c.CreateChatCompletionStream(ctx, req)
	if err != nil {
		return "", false, err // the transport's verdict, retries included
	}
	defer s.Close()
	var b strings.Builder
	answered := false
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) && !strings.HasPrefix(s.Header().Get("Content-Type"), "text/event-stream") {
				// No event stream, and no error go-openai could read in
				// it: a server that ignores "stream": true (or a page).
				// Asked again as a plain call, which go-openai reads as
				// such.
				s.Close()
				return c.chatPlain(ctx, req)
			}
			var apiErr *openai.APIError
			return "", !errors.As(err, &apiErr), err
		}
		for _, ch := range r.Choices {
			if ch.Index == 0 {
				answered = true
				b.WriteString(ch.Delta.Content)
			}
		}
	}
	if !answered {
		return "", false, ErrEmptyResponse
	}
	return b.String(), false, nil
}

// chatPlain is chatOnce by a plain completion.
func (c *Client) chatPlain(ctx context.Context, req openai.ChatCompletionRequest) (string, bool, error) {
	resp, err := c.CreateChatCompletion(ctx, req)
	switch {
	case err != nil:
		return "", false, err
	case len(resp.Choices) == 0:
		return "", false, ErrEmptyResponse
	}
	return resp.Choices[0].Message.Content, false, nil
}

// CreateChatCompletion is go-openai's CreateChatCompletion, tracked and
// retried. An empty req.Model means the configured model. Errors are
// go-openai's: errors.As with *openai.APIError gives the server's error and
// real status code, even after retries ran out (its HTTPStatus then says
// how many attempts were made); errors.Is matches ErrDraining,
// ErrForcedShutdown and context errors.
//
// Every method, OpenAI()'s included, reads at most 1 MiB of an error
// response's body, and replaces the API key with "[redacted]" in it, and in
// the status line, should the server quote it: in a JSON body, also where
// escapes spell it, as in "sk\u002d...". A 2xx response whose JSON body is an error,
// {"error": {...}}, as some gateways send, is an *openai.APIError with that
// 2xx status rather than an empty success; it is not retried.
func (c *Client) CreateChatCompletion(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error) {
	if req.Model == "" {
		req.Model = c.model
	}
	return c.oa.CreateChatCompletion(ctx, req)
}

// CreateChatCompletionStream is go-openai's CreateChatCompletionStream,
// tracked and retried until the first event of the body: a 2xx answer
// whose body ends, fails or stalls (Config.FirstTokenTimeout, and
// AttemptTimeout if set) before its first data event is retried like a
// connection error; comments and keep-alives before it do not count, and
// reach go-openai with the rest. Once an event has arrived nothing is
// replayed. The call stays in flight, holding any drain, until the
// stream is closed, its "data: [DONE]" event has been received, or its
// body has ended, so always Close it. (go-openai buffers what it
// receives: events already received may still be returned by Recv after
// the call stopped counting.)
//
// A stream that ends without the API's terminating "data: [DONE]" event,
// and not cleanly after an event carrying a finish_reason (a connection
// cut mid-answer, or a 2xx answer that was no stream at all), makes Recv
// return an error matching io.ErrUnexpectedEOF rather than io.EOF, so a
// truncated answer is never taken for a complete one. So do a silence
// between events longer than Config.StreamIdleTimeout (ErrStreamStalled)
// and a data event that is not a JSON object (ErrMalformedEvent); both end
// the stream and release its call. A redirect that was not followed (see
// ErrNotAStream) makes Recv return an error matching ErrNotAStream.
func (c *Client) CreateChatCompletionStream(ctx context.Context, req openai.ChatCompletionRequest) (*openai.ChatCompletionStream, error) {
	if req.Model == "" {
		req.Model = c.model
	}
	return c.oa.CreateChatCompletionStream(ctx, req)
}

// OpenAI returns the underlying go-openai client for every other endpoint
// (embeddings, models, images, files, ...). Its calls go through the same
// transport: tracked, retried, failed over and refused while draining.
// Its chat and text completion requests (CreateChatCompletion,
// CreateCompletion and their streams) that leave Model empty get
// Config.Model; other requests are sent as they are.
func (c *Client) OpenAI() *openai.Client { return c.public }

// Tracker returns the Tracker that registers this client's calls.
func (c *Client) Tracker() *Tracker { return c.tracker }

// Shutdown drains this client's calls: new calls are refused with
// ErrDraining at once, and Shutdown returns nil as soon as the calls in
// flight (streams until closed) have finished. If ctx ends first, the calls
// still in flight are cancelled with cause ErrForcedShutdown and a
// *ForcedDrainError naming them is returned; see Tracker.Drain. Calls a
// signal's context (signal.NotifyContext) cancelled before they could
// drain make it return a *CallsCancelledError rather than nil. It then
// closes idle connections. The Tracker is drained as a whole, so a Tracker
// shared through Config.Tracker drains every client using it.
func (c *Client) Shutdown(ctx context.Context) error {
	err := c.tracker.Drain(ctx)
	c.http.CloseIdleConnections()
	return err
}

// envelopeError is the transport's apiError: the *openai.APIError of a 2xx
// response whose body is {"error": {...}}, with the response's status, as
// go-openai makes it for an error status; nil for any other body.
func envelopeError(resp *http.Response, body []byte) error {
	var er openai.ErrorResponse
	if err := json.Unmarshal(body, &er); err != nil || er.Error == nil {
		return nil
	}
	er.Error.HTTPStatus = resp.Status + " (llmdrain: an error in a successful response)"
	er.Error.HTTPStatusCode = resp.StatusCode
	return er.Error
}

// String describes the client without its keys: its primary endpoint and
// model, and its fallback targets, if any, with every key "[redacted]".
func (c *Client) String() string {
	if c.fallbacks == "" {
		return fmt.Sprintf("llmdrain.Client{BaseURL: %q, Model: %q}", c.base, c.model)
	}
	return fmt.Sprintf("llmdrain.Client{BaseURL: %q, Model: %q, Fallbacks: %s}", c.base, c.model, c.fallbacks)
}

// modelDefault sets the model of a chat or text completion request whose
// JSON body leaves it empty or out, for the requests made through
// OpenAI(): go-openai has no such default, and always encodes the model,
// first. So the common case, a model given, is told from the body's first
// bytes, read from a copy (GetBody); any other body, JSON that is no
// object or a multipart upload, is sent as it is.
type modelDefault struct {
	next  http.RoundTripper
	model string
}

// emptyModel is how go-openai's requests begin when Model is empty.
const emptyModel = `{"model":""`

func (m *modelDefault) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPost || req.GetBody == nil ||
		!(strings.HasSuffix(req.URL.Path, "/chat/completions") || strings.HasSuffix(req.URL.Path, "/completions")) ||
		!strings.HasPrefix(req.Header.Get("Content-Type"), "application/json") {
		return m.next.RoundTrip(req)
	}
	rc, err := req.GetBody()
	if err != nil {
		return m.next.RoundTrip(req)
	}
	var head [len(emptyModel)]byte
	n, _ := io.ReadFull(rc, head[:])
	if n == len(head) && string(head[:]) != emptyModel && string(head[:len(emptyModel)-1]) == emptyModel[:len(emptyModel)-1] {
		rc.Close()
		return m.next.RoundTrip(req) // {"model":"x...
	}
	rest, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return m.next.RoundTrip(req)
	}
	body := withModel(append(head[:n:n], rest...), m.model)
	if body == nil {
		return m.next.RoundTrip(req)
	}
	closeBody(req) // replaced: the RoundTripper contract has it closed
	r := req.WithContext(req.Context())
	r.ContentLength = int64(len(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.Body, _ = r.GetBody()
	return m.next.RoundTrip(r)
}

// CloseIdleConnections reaches through to the transport.
func (m *modelDefault) CloseIdleConnections() {
	if c, ok := m.next.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

// withModel returns body, a JSON object, with its "model" set to model if
// it was empty or missing; nil if body needs no change or is no object.
func withModel(body []byte, model string) []byte { return setModel(body, model, false) }

// setModel returns body, a JSON object, with its "model" set to model if
// it was empty or missing, or, with replace, any other; nil if body needs
// no change or is no object.
func setModel(body []byte, model string, replace bool) []byte {
	quoted, err := json.Marshal(model)
	if err != nil {
		return nil
	}
	if rest, ok := bytes.CutPrefix(body, []byte(`{"model":`)); ok {
		// go-openai's encoding, the model first: put it in place, keep
		// the rest.
		dec := json.NewDecoder(bytes.NewReader(rest))
		if tok, err := dec.Token(); err == nil {
			if cur, ok := tok.(string); ok {
				if cur == model || cur != "" && !replace {
					return nil
				}
				return slices.Concat([]byte(`{"model":`), quoted, rest[dec.InputOffset():])
			}
		}
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil || fields == nil {
		return nil
	}
	if m, ok := fields["model"]; ok && string(m) != `""` && string(m) != "null" {
		var cur string
		if !replace || json.Unmarshal(m, &cur) == nil && cur == model {
			return nil
		}
	}
	fields["model"] = quoted
	out, err := json.Marshal(fields)
	if err != nil {
		return nil
	}
	return out
}
