package llmdrain

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// logRecord is one record a logRecorder kept: its level, message and
// attributes, values as text.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r logRecord) String() string { return fmt.Sprintf("%v %s %v", r.level, r.msg, r.attrs) }

// logRecorder is a slog.Handler that keeps every record, for tests that
// assert what was logged and at which level.
type logRecorder struct {
	mu      sync.Mutex
	records []logRecord
}

func newLogRecorder() (*logRecorder, *slog.Logger) {
	r := &logRecorder{}
	return r, slog.New(r)
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	lr := logRecord{level: rec.Level, msg: rec.Message, attrs: map[string]string{}}
	rec.Attrs(func(a slog.Attr) bool {
		lr.attrs[a.Key] = a.Value.Resolve().String()
		return true
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records = append(r.records, lr)
	return nil
}

func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }

// find returns the records whose message is msg.
func (r *logRecorder) find(msg string) []logRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []logRecord
	for _, rec := range r.records {
		if rec.msg == msg {
			out = append(out, rec)
		}
	}
	return out
}

// all returns every record as text, for failure messages and key checks.
func (r *logRecorder) all() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, rec := range r.records {
		fmt.Fprintln(&b, rec)
	}
	return b.String()
}

// clusterHost is a name like an in-cluster service's; the tests' dialer
// resolves it to the loopback address of an llmtest server.
const clusterHost = "vllm.default.svc.cluster.local"

// clusterClient returns the URL of srv under clusterHost and an
// http.Client whose dialer connects that name to srv, recording the
// addresses it was asked for: the network a user's cluster DNS provides.
func clusterClient(t *testing.T, srv *llmtest.Server) (string, *http.Client, func() []string) {
	t.Helper()
	u, err := url.Parse(srv.URL)
	require.NoError(t, err)
	var (
		mu     sync.Mutex
		dialed []string
	)
	d := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		host, _, err := net.SplitHostPort(addr)
		if err != nil || host != clusterHost {
			return nil, fmt.Errorf("test resolver: no such host %q", addr)
		}
		return d.DialContext(ctx, network, u.Host)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return "http://" + clusterHost + ":" + u.Port() + "/v1", &http.Client{Transport: tr}, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), dialed...)
	}
}

// TestInsecurePlainHTTP: plain http to a host that is not loopback (an
// in-cluster name, resolved here to an llmtest server) is refused by
// default, with an error saying how to opt in, and reached with the
// opt-in, which is logged once at WARN without the key.
func TestInsecurePlainHTTP(t *testing.T) {
	srv := newServer(t)
	base, hc, dialed := clusterClient(t, srv)

	_, err := New(Config{APIKey: fakeKey, BaseURL: base, HTTPClient: hc})
	require.ErrorIs(t, err, ErrInvalidConfig)
	var ce *ConfigError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "BaseURL", ce.Field)
	assert.Contains(t, err.Error(), "plain http would send the API key unencrypted")
	assert.Contains(t, err.Error(), "set InsecurePlainHTTP: true")
	assert.NotContains(t, err.Error(), fakeKey)

	_, err = New(Config{APIKey: fakeKey, BaseURL: srv.URL, HTTPClient: hc, Fallbacks: []Target{{BaseURL: base}}})
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, "Fallbacks[0].BaseURL", ce.Field)
	assert.Contains(t, err.Error(), "set Fallbacks[0].InsecurePlainHTTP: true")
	assert.Empty(t, dialed(), "nothing was sent")

	logs, logger := newLogRecorder()
	c := newTestClient(t, srv, Config{BaseURL: base, InsecurePlainHTTP: true, HTTPClient: hc, Logger: logger})
	for i := range 2 {
		text, err := c.Chat(context.Background(), fmt.Sprint("in cluster ", i))
		require.NoError(t, err)
		assert.Equal(t, llmtest.Reply(fmt.Sprint("in cluster ", i)), text)
	}
	require.NotEmpty(t, dialed())
	su, err := url.Parse(srv.URL)
	require.NoError(t, err)
	assert.Equal(t, clusterHost+":"+su.Port(), dialed()[0], "the call went to the cluster name, through the user's dialer")
	warn := logs.find("llmdrain: plain http to a host that is not loopback (InsecurePlainHTTP): the API key and the prompts cross the network unencrypted")
	require.Len(t, warn, 1, "logged once, at New: %s", logs.all())
	assert.Equal(t, slog.LevelWarn, warn[0].level)
	assert.Contains(t, warn[0].attrs["endpoint"], clusterHost)
	assert.NotContains(t, logs.all(), fakeKey)
	assert.Contains(t, c.String(), clusterHost)

	// A fallback opts in on its own; the primary stays https-or-loopback.
	logs, logger = newLogRecorder()
	c = newTestClient(t, srv, Config{HTTPClient: hc, Logger: logger,
		Fallbacks: []Target{{BaseURL: base, InsecurePlainHTTP: true}, {BaseURL: base, InsecurePlainHTTP: true, Model: "other"}}})
	require.Len(t, logs.find("llmdrain: plain http to a host that is not loopback (InsecurePlainHTTP): the API key and the prompts cross the network unencrypted"), 1,
		"one warning per endpoint")
	assert.Contains(t, fmt.Sprint(Target{BaseURL: base, InsecurePlainHTTP: true}), "InsecurePlainHTTP: true")
	_, err = c.Chat(context.Background(), "primary")
	require.NoError(t, err)
}

// headerLog is a base transport that records the credential headers of
// every request it sends, then sends it.
type headerLog struct {
	mu   sync.Mutex
	seen []http.Header
	next http.RoundTripper
}

func (h *headerLog) RoundTrip(req *http.Request) (*http.Response, error) {
	h.mu.Lock()
	h.seen = append(h.seen, http.Header{
		"Api-Key":             req.Header.Values("Api-Key"),
		"Authorization":       req.Header.Values("Authorization"),
		"Openai-Organization": req.Header.Values("OpenAI-Organization"),
		"Url":                 {req.URL.String()},
	})
	h.mu.Unlock()
	return h.next.RoundTrip(req)
}

func (h *headerLog) all() []http.Header {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]http.Header(nil), h.seen...)
}

// azure is an OpenAIConfig for Azure OpenAI.
func azure(oc *openai.ClientConfig) {
	oc.APIType = openai.APITypeAzure
	oc.APIVersion = "2024-10-21"
	oc.OrgID = "org-test"
	oc.AzureModelMapperFunc = func(model string) string { return strings.ReplaceAll(model, ".", "") }
}

// TestAzure: with go-openai configured for Azure through OpenAIConfig, calls
// go to the deployment URLs with the key in the api-key header (and no
// bearer token), are retried, tracked, drained, and refused with a bare
// ErrDraining once draining.
func TestAzure(t *testing.T) {
	srv := llmtest.NewServer(llmtest.WithAzure(), llmtest.WithAPIKey(fakeKey), llmtest.WithModels())
	t.Cleanup(srv.Close)
	hl := &headerLog{next: http.DefaultTransport}
	t.Cleanup(http.DefaultTransport.(*http.Transport).CloseIdleConnections)
	logs, logger := newLogRecorder()
	c := newTestClient(t, srv, Config{Model: "gpt-4.1", OpenAIConfig: azure, HTTPClient: &http.Client{Transport: hl}, Logger: logger})

	// Retried: a 503, then the answer.
	srv.Script(llmtest.Status(http.StatusServiceUnavailable))
	text, err := c.Chat(context.Background(), "azure")
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("azure"), text)
	assert.Len(t, logs.find("llmdrain: retrying"), 1, logs.all())

	resp, err := c.CreateChatCompletion(context.Background(), userMsg("plain"))
	require.NoError(t, err)
	assert.Equal(t, "gpt-41", resp.Model, "the deployment the mapper made of Config.Model")
	emb, err := c.OpenAI().CreateEmbeddings(context.Background(), openai.EmbeddingRequest{Model: "text-embedding-3-small", Input: "x"})
	require.NoError(t, err)
	assert.Len(t, emb.Data, 1)

	for _, h := range hl.all() {
		assert.Equal(t, []string{fakeKey}, h["Api-Key"], "the key in Azure's header: %v", h["Url"])
		assert.Empty(t, h["Authorization"], "no bearer token")
		assert.Equal(t, []string{"org-test"}, h["Openai-Organization"], "OpenAIConfig's OrgID reaches through")
		assert.Contains(t, h["Url"][0], "/openai/deployments/")
		assert.Contains(t, h["Url"][0], "api-version=2024-10-21")
	}

	// Tracked: a slow call holds the drain, which waits for it.
	srv.Script(llmtest.Delay(300 * time.Millisecond))
	errc := make(chan error, 1)
	go func() { _, err := c.Chat(context.Background(), "slow"); errc <- err }()
	waitInFlight(t, srv, 1)
	assert.Equal(t, 1, c.Tracker().InFlight())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, c.Shutdown(ctx))
	require.NoError(t, <-errc, "drained, not cut")
	_, err = c.CreateChatCompletion(context.Background(), userMsg("late"))
	assert.Same(t, ErrDraining, err)
}

// TestAzureKeyStaysHome: Azure's api-key header goes to the target's own
// origin only, as the bearer token does: never on a redirect elsewhere.
func TestAzureKeyStaysHome(t *testing.T) {
	for _, c := range []struct {
		location string
		key      bool
	}{
		{"https://evil.example.net/openai/deployments/gpt-4o/chat/completions?api-version=1", false},
		{"http://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions?api-version=1", false},
		{"https://res.openai.azure.com/openai/deployments/other/chat/completions?api-version=1", true},
	} {
		t.Run(c.location, func(t *testing.T) {
			rt := &redirector{location: c.location}
			hl := &headerLog{next: rt}
			cl, err := New(Config{APIKey: fakeKey, BaseURL: "https://res.openai.azure.com", OpenAIConfig: azure,
				HTTPClient: &http.Client{Transport: hl}})
			require.NoError(t, err)
			_, err = plainChat(context.Background(), cl, "x")
			require.NoError(t, err)
			seen := hl.all()
			require.Len(t, seen, 2)
			assert.Equal(t, []string{fakeKey}, seen[0]["Api-Key"])
			for _, h := range seen {
				assert.Empty(t, h["Authorization"])
			}
			if c.key {
				assert.Equal(t, []string{fakeKey}, seen[1]["Api-Key"])
			} else {
				assert.Empty(t, seen[1]["Api-Key"], "key sent to %s", c.location)
			}
		})
	}
}

// TestOpenAIConfigKeepsLlmdrainsParts: OpenAIConfig may not move the
// endpoint or replace the transport; New says so and names the field.
func TestOpenAIConfigKeepsLlmdrainsParts(t *testing.T) {
	for name, f := range map[string]func(*openai.ClientConfig){
		"BaseURL":    func(oc *openai.ClientConfig) { oc.BaseURL = "https://elsewhere.example.com/v1" },
		"HTTPClient": func(oc *openai.ClientConfig) { oc.HTTPClient = http.DefaultClient },
		"replaced": func(oc *openai.ClientConfig) {
			*oc = openai.DefaultAzureConfig(fakeKey, "https://res.openai.azure.com")
		},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := New(Config{APIKey: fakeKey, OpenAIConfig: f})
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, "OpenAIConfig", ce.Field)
			assert.ErrorIs(t, err, ErrInvalidConfig)
			assert.NotContains(t, err.Error(), fakeKey)
		})
	}
	// EmptyMessagesLimit and the like reach through.
	srv := newServer(t)
	c := newTestClient(t, srv, Config{OpenAIConfig: func(oc *openai.ClientConfig) { oc.EmptyMessagesLimit = 5 }})
	_, err := c.Chat(context.Background(), "hi")
	require.NoError(t, err)
}

// TestErrDrainingUnwrapped: once draining, every method returns
// ErrDraining itself, not a *url.Error naming a URL nothing was sent to.
func TestErrDrainingUnwrapped(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	require.NoError(t, c.Shutdown(context.Background()))
	ctx := context.Background()
	calls := map[string]func() error{
		"Chat":                       func() error { _, err := c.Chat(ctx, "x"); return err },
		"CreateChatCompletion":       func() error { _, err := c.CreateChatCompletion(ctx, userMsg("x")); return err },
		"CreateChatCompletionStream": func() error { _, err := c.CreateChatCompletionStream(ctx, userMsg("x")); return err },
		"OpenAI().CreateChatCompletion": func() error {
			_, err := c.OpenAI().CreateChatCompletion(ctx, userMsg("x"))
			return err
		},
		"OpenAI().CreateEmbeddings": func() error {
			_, err := c.OpenAI().CreateEmbeddings(ctx, openai.EmbeddingRequest{Model: "m", Input: "x"})
			return err
		},
		"OpenAI().ListModels": func() error { _, err := c.OpenAI().ListModels(ctx); return err },
	}
	for name, call := range calls {
		err := call()
		assert.Same(t, ErrDraining, err, name)
		assert.Equal(t, "llmdrain: draining, call refused", fmt.Sprint(err), name)
	}
	assert.Zero(t, srv.Stats().Requests+srv.Stats().Other, "nothing was sent")
}

// TestSecondSignalCause: a call cut by a second signal says so, and still
// matches ErrForcedShutdown; the shutdown's failures are logged at WARN
// and ERROR.
func TestSecondSignalCause(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	c := newTestClient(t, srv, Config{})
	errc := make(chan error, 1)
	go func() { _, err := c.Chat(context.Background(), "cut"); errc <- err }()
	waitInFlight(t, srv, 1)

	logs, logger := newLogRecorder()
	sd := &Shutdown{Timeout: time.Minute, Logger: logger}
	sd.Register("llm", c.Shutdown)
	sd.Trigger()
	sd.Trigger() // the operator's second Ctrl-C, before the drain even began
	err := sd.Run(context.Background())
	assert.ErrorIs(t, err, ErrSecondSignal)
	assert.ErrorIs(t, err, ErrForcedShutdown)
	var fe *ForcedDrainError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, ErrSecondSignal, fe.Cause)

	cerr := <-errc
	assert.ErrorIs(t, cerr, ErrSecondSignal)
	assert.ErrorIs(t, cerr, ErrForcedShutdown)
	assert.Contains(t, cerr.Error(), "cancelled by a second signal")
	assert.NotContains(t, cerr.Error(), "drain deadline")

	levels := map[string]slog.Level{
		"shutdown: second trigger, forcing": slog.LevelWarn,
		"shutdown: drain failed":            slog.LevelError,
		"shutdown: done":                    slog.LevelError,
		"shutdown: triggered":               slog.LevelInfo,
	}
	for msg, level := range levels {
		recs := logs.find(msg)
		require.Len(t, recs, 1, "%s: %s", msg, logs.all())
		assert.Equal(t, level, recs[0].level, msg)
	}
	assert.Equal(t, "false", logs.find("shutdown: done")[0].attrs["ok"])
}

// TestRegisterReservedShare: with a 2 s Timeout, an inbound drain that
// would use all of it is forced when only the LLM drain's 1 s reserve is
// left, and the LLM drain, started then, lets its call finish and
// succeeds; registered without a reserve, it would start with no time.
func TestRegisterReservedShare(t *testing.T) {
	for _, reserved := range []bool{true, false} {
		t.Run(fmt.Sprint("reserved=", reserved), func(t *testing.T) {
			logs, logger := newLogRecorder()
			sd := &Shutdown{Timeout: 2 * time.Second, Logger: logger}
			httpForced := make(chan error, 1)
			sd.Register("http", func(ctx context.Context) error {
				<-ctx.Done() // a slow inbound drain: it would take the whole timeout
				httpForced <- context.Cause(ctx)
				return ctx.Err()
			})
			tk := NewTracker()
			callCtx, done, err := tk.Begin(context.Background())
			require.NoError(t, err)
			go func() {
				// The background call finishes a moment after the inbound
				// drain was forced, or when it is cut.
				select {
				case <-httpForced:
					time.Sleep(20 * time.Millisecond)
				case <-callCtx.Done():
				}
				done()
			}()
			var llmStartedExpired bool
			llm := func(ctx context.Context) error {
				llmStartedExpired = ctx.Err() != nil
				return tk.Drain(ctx)
			}
			if reserved {
				sd.RegisterReserved("llm", time.Second, llm)
			} else {
				sd.Register("llm", llm)
			}
			sd.Trigger()
			start := time.Now()
			err = sd.Run(context.Background())
			took := time.Since(start)
			assert.Less(t, took, sd.Timeout+ShutdownGrace, "bounded by the Timeout")
			require.Error(t, err)
			assert.Contains(t, err.Error(), `drain "http"`)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
			if reserved {
				assert.NotContains(t, err.Error(), `drain "llm"`, "the LLM drain had its share")
				assert.False(t, llmStartedExpired)
				assert.Less(t, took, sd.Timeout, "the call finished within the LLM drain's share")
				recs := logs.find("shutdown: drained")
				require.Len(t, recs, 1, logs.all())
				assert.Equal(t, "llm", recs[0].attrs["drain"])
				assert.Equal(t, slog.LevelInfo, recs[0].level)
				spent := logs.find("shutdown: drain's share of the timeout spent, forcing it")
				require.Len(t, spent, 1, logs.all())
				assert.Equal(t, slog.LevelWarn, spent[0].level)
				assert.Equal(t, "http", spent[0].attrs["drain"])
			} else {
				assert.True(t, llmStartedExpired, "without a reserve the LLM drain starts with no time left")
				var fe *ForcedDrainError
				require.ErrorAs(t, err, &fe, "the call was cut")
			}
			for _, rec := range logs.find("shutdown: drain failed") {
				assert.Equal(t, slog.LevelError, rec.level)
			}
		})
	}
}

// TestFailoverLogsNameNextEndpoint: the line before a retry names the
// endpoint the retry goes to, and a failover says where from and to.
func TestFailoverLogsNameNextEndpoint(t *testing.T) {
	logs, logger := newLogRecorder()
	primary, fallback, c, _ := twoTargets(t, Config{FailoverAfter: 1, Logger: logger})
	primary.Script(llmtest.Status(http.StatusBadGateway))
	chat(t, c, "over")
	host := func(s *llmtest.Server) string { u, _ := url.Parse(s.URL); return u.Host }

	over := logs.find("llmdrain: failing over")
	require.Len(t, over, 1, logs.all())
	assert.Equal(t, slog.LevelWarn, over[0].level)
	assert.Equal(t, host(fallback), over[0].attrs["endpoint"])
	assert.Equal(t, host(primary), over[0].attrs["from"])
	retry := logs.find("llmdrain: retrying")
	require.Len(t, retry, 1)
	assert.Equal(t, host(fallback), retry[0].attrs["endpoint"], "the retry line agrees")
	out := logs.find("llmdrain: target out of rotation")
	require.Len(t, out, 1)
	assert.Equal(t, slog.LevelWarn, out[0].level)

	// A retry at the same endpoint is no failover.
	logs2, logger2 := newLogRecorder()
	primary2, _, c2, _ := twoTargets(t, Config{Logger: logger2})
	primary2.Script(llmtest.Status(http.StatusBadGateway))
	chat(t, c2, "again")
	assert.Empty(t, logs2.find("llmdrain: failing over"), logs2.all())
	retry = logs2.find("llmdrain: retrying")
	require.Len(t, retry, 1)
	assert.Equal(t, host(primary2), retry[0].attrs["endpoint"])
	assert.Equal(t, host(primary2), retry[0].attrs["from"])
}

// TestSignalContextCutIsNotSuccess: a call made with a
// signal.NotifyContext context is cancelled at the signal itself; the
// drain then has nothing to wait for, but says it lost the call. The same
// call with context.WithoutCancel drains. A real signal, sent to this
// process.
func TestSignalContextCutIsNotSuccess(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	c := newTestClient(t, srv, Config{})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGUSR2)
	defer stop()
	errc := make(chan error, 1)
	go func() { _, err := c.Chat(ctx, "worker"); errc <- err }()
	waitInFlight(t, srv, 1)
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGUSR2))
	require.ErrorIs(t, <-errc, context.Canceled)
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := c.Shutdown(dctx)
	var ce *CallsCancelledError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 1, ce.N)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Contains(t, err.Error(), "llmdrain: 1 call cancelled by a signal's context (user defined signal 2 signal received) instead of drained: POST /v1/chat/completions")
	assert.Contains(t, err.Error(), "context.WithoutCancel")

	// The worker pattern: the call's context outlives the signal.
	srv2 := newServer(t)
	srv2.Script(llmtest.Delay(200 * time.Millisecond))
	c2 := newTestClient(t, srv2, Config{})
	ctx2, stop2 := signal.NotifyContext(context.Background(), syscall.SIGUSR2)
	defer stop2()
	go func() { _, err := c2.Chat(context.WithoutCancel(ctx2), "worker"); errc <- err }()
	waitInFlight(t, srv2, 1)
	require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGUSR2))
	<-ctx2.Done()
	require.NoError(t, c2.Shutdown(dctx), "drained")
	require.NoError(t, <-errc)
}

// TestRunWithNotifyContext: Run given the service's own
// signal.NotifyContext for the signals it watches counts that context's
// signal once: the drains run unforced, whichever of the two saw it first.
// A real signal, sent to this process, many times over to catch both
// orders.
func TestRunWithNotifyContext(t *testing.T) {
	for i := range 20 {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGUSR2)
		logs, logger := newLogRecorder()
		sd := &Shutdown{Signals: []os.Signal{syscall.SIGUSR2}, Timeout: time.Minute, Logger: logger}
		tk := NewTracker()
		_, done, err := tk.Begin(context.Background())
		require.NoError(t, err)
		sd.Register("llm", func(ctx context.Context) error {
			go func() {
				time.Sleep(10 * time.Millisecond) // a call finishing during the drain
				done()
			}()
			return tk.Drain(ctx)
		})
		sd.Notify()
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGUSR2))
		err = sd.Run(ctx)
		stop()
		require.NoError(t, err, "run %d: the one signal forced the shutdown: %s", i, logs.all())
		assert.Empty(t, logs.find("shutdown: second signal, forcing"), "run %d", i)
	}
}
