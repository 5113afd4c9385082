package llmdrain

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// wrongKey is a second recognisable key, for the 401 path.
const wrongKey = "sk-llmdrain-FAKE-wrong-51e0d2"

// leakMarker is in both keys; no output may contain it.
const leakMarker = "FAKE"

// outputs collects everything a user could see, labelled.
type outputs struct {
	mu  sync.Mutex
	all []labelled
}

type labelled struct{ label, text string }

func (o *outputs) add(label, text string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.all = append(o.all, labelled{label, text})
}

// value records v under every fmt verb that could walk into its fields.
func (o *outputs) value(label string, v any) {
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		o.add(label+" "+verb, fmt.Sprintf(verb, v))
	}
}

// err records an error: its text, its verbs, and each error in its chain.
func (o *outputs) err(label string, err error) {
	if err == nil {
		o.add(label, "no error")
		return
	}
	o.value(label, err)
	for i, e := 0, errors.Unwrap(err); e != nil && i < 10; i, e = i+1, errors.Unwrap(e) {
		o.value(fmt.Sprintf("%s unwrapped %d", label, i+1), e)
	}
	var apiErr *openai.APIError
	if errors.As(err, &apiErr) {
		o.value(label+" APIError", *apiErr)
	}
	var reqErr *openai.RequestError
	if errors.As(err, &reqErr) {
		o.add(label+" RequestError body", string(reqErr.Body))
	}
}

// teeHandler sends every record to several handlers.
type teeHandler []slog.Handler

func (t teeHandler) Enabled(ctx context.Context, l slog.Level) bool { return true }
func (t teeHandler) Handle(ctx context.Context, r slog.Record) error {
	for _, h := range t {
		if err := h.Handle(ctx, r.Clone()); err != nil {
			return err
		}
	}
	return nil
}
func (t teeHandler) WithAttrs(as []slog.Attr) slog.Handler {
	out := make(teeHandler, len(t))
	for i, h := range t {
		out[i] = h.WithAttrs(as)
	}
	return out
}
func (t teeHandler) WithGroup(name string) slog.Handler {
	out := make(teeHandler, len(t))
	for i, h := range t {
		out[i] = h.WithGroup(name)
	}
	return out
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSecretsNeverLeak runs every public code path with a recognisable key:
// successes, each kind of failure (a server echoing the key among them),
// drains, batches with a journal, config errors, recovered panics, and
// prints everything with every verb and through slog at debug level, as
// JSON and as text. The key must appear in none of it.
func TestSecretsNeverLeak(t *testing.T) {
	var logs syncBuffer
	opts := &slog.HandlerOptions{Level: slog.LevelDebug, AddSource: true}
	logger := slog.New(teeHandler{slog.NewJSONHandler(&logs, opts), slog.NewTextHandler(&logs, opts)})
	out := &outputs{}
	ctx := context.Background()

	srv := newServer(t)
	c := newTestClient(t, srv, Config{Logger: logger, MaxRetryAfter: time.Second})
	// Whatever is printed is also logged, so the handlers see it too.
	record := func(label string, v any) {
		if err, ok := v.(error); ok {
			out.err(label, err)
			logger.DebugContext(ctx, label, "err", err)
			return
		}
		out.value(label, v)
		logger.DebugContext(ctx, label, "value", v)
	}

	t.Run("successes", func(t *testing.T) {
		text, err := c.Chat(ctx, "hello")
		require.NoError(t, err)
		record("chat", text)
		resp, err := c.CreateChatCompletion(ctx, userMsg("hello"))
		require.NoError(t, err)
		record("completion", resp)
		s, err := c.CreateChatCompletionStream(ctx, userMsg("a stream"))
		require.NoError(t, err)
		for {
			chunk, err := s.Recv()
			if err != nil {
				record("stream end", err)
				break
			}
			record("chunk", chunk)
		}
		record("stream", s)
		require.NoError(t, s.Close())
		models, err := c.OpenAI().ListModels(ctx)
		require.NoError(t, err)
		record("models", models)
		emb, err := c.OpenAI().CreateEmbeddings(ctx, openai.EmbeddingRequest{Input: []string{"x"}, Model: openai.SmallEmbedding3})
		require.NoError(t, err)
		record("embeddings", emb.Usage)
	})

	echo := `{"error":{"message":"Incorrect API key provided: ` + fakeKey + `","type":"invalid_request_error","code":"invalid_api_key"}}`
	escapedEcho := `{"error":{"message":"Incorrect API key provided: ` + escapedKey + `","type":"invalid_request_error","code":"` + escapedKey + `"}}`
	failures := []struct {
		name   string
		script []llmtest.Fault
		stream bool
		want   func(error) bool
	}{
		{"503 until the retries run out", repeat(llmtest.Status(503), 4), false, isAPIError(503)},
		{"429 above the cap", []llmtest.Fault{llmtest.RateLimited(time.Minute)}, false, isAPIError(429)},
		{"resets until the retries run out", repeat(llmtest.Reset(), 4), false, func(err error) bool { return err != nil }},
		{"400 echoing the key", []llmtest.Fault{llmtest.Status(401).WithBody(echo)}, false, isAPIError(401)},
		{"400 echoing the key, not JSON", []llmtest.Fault{llmtest.Status(400).WithBody("bad key " + fakeKey)}, false, isRequestError(400)},
		{"400 echoing the key, stream", []llmtest.Fault{llmtest.Status(401).WithBody(echo)}, true, isAPIError(401)},
		{"200 error echoing the key", []llmtest.Fault{llmtest.Status(200).WithBody(echo)}, false, isAPIError(200)},
		{"200 error echoing the key, stream", []llmtest.Fault{llmtest.Status(200).WithBody(echo)}, true, isAPIError(200)},
		{"truncated stream", []llmtest.Fault{llmtest.Truncate(1)}, true, isUnexpectedEOF},
		{"truncated answer", repeat(llmtest.Truncate(0), 4), false, isUnexpectedEOF},
		{"HTML 502", repeat(llmtest.Status(502).WithBody(proxyPage), 4), false, isRequestError(502)},
		{"401 echoing the key escaped", []llmtest.Fault{llmtest.Status(401).WithBody(escapedEcho)}, false, isAPIError(401)},
		{"401 echoing the key escaped, stream", []llmtest.Fault{llmtest.Status(401).WithBody(escapedEcho)}, true, isAPIError(401)},
		{"400 echoing the key escaped, not an API error", []llmtest.Fault{llmtest.Status(400).WithBody(`{"detail":"` + escapedKey + `"}`)}, false, isRequestError(400)},
		{"200 error echoing the key escaped", []llmtest.Fault{llmtest.Status(200).WithBody(escapedEcho)}, false, isAPIError(200)},
		{"200 error echoing the key escaped, stream", []llmtest.Fault{llmtest.Status(200).WithBody(escapedEcho)}, true, isAPIError(200)},
	}
	for _, f := range failures {
		t.Run(f.name, func(t *testing.T) {
			srv.Script(f.script...)
			var err error
			if f.stream {
				_, err = soakStream(ctx, c, f.name, false)
			} else {
				_, err = c.Chat(ctx, f.name)
			}
			assert.True(t, f.want(err), "unexpected error %v", err)
			record(f.name, err)
		})
	}

	// A 2xx stream whose server sends an error event quoting the key: go-openai
	// decodes the event, escapes and all, into Recv's error. Each event is
	// written in two TCP writes that cut the key in two.
	t.Run("2xx stream with an error event echoing the key", func(t *testing.T) {
		oneEscape := strings.Replace(fakeKey, "-", `\u002d`, 1)
		firstEscaped := `\u0073` + fakeKey[1:]
		errEvent := func(k string) string {
			return `data: {"error":{"message":"Incorrect API key provided: ` + k + `","type":"invalid_request_error","code":"` + k + `"}}` + "\n\n"
		}
		errLine := func(k string) string { // not a data line: accumulated to the end
			return `{"error":{"message":"Incorrect API key provided: ` + k + `"}}` + "\n"
		}
		for name, event := range map[string]string{
			"raw":                        errEvent(fakeKey),
			"escaped":                    errEvent(escapedKey),
			`sk\u002d`:                   errEvent(oneEscape),
			`\u0073k-`:                   errEvent(firstEscaped),
			"not a data line, raw":       errLine(fakeKey),
			"not a data line, escaped":   errLine(escapedKey),
			"over two lines, raw":        `{"error":{"message":"key: ` + fakeKey[:14] + "\n" + fakeKey[14:] + `"}}` + "\n",
			"over two lines, escaped":    `{"error":{"message":"key: ` + oneEscape[:5] + "\n" + oneEscape[5:] + `"}}` + "\n",
			"over three lines, escaped":  "{\n" + `"error":{"message":"` + firstEscaped + `"` + "\n}}\n",
			"raw, data line then others": errEvent(fakeKey) + "data: [DONE]\n\n",
		} {
			cut := strings.Index(event, leakMarker) + 2 // inside the key, raw or escaped
			if cut < 2 {
				cut = strings.Index(event, `\u0046`) + 3
			}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				f := w.(http.Flusher)
				io.WriteString(w, `data: {"id":"1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}`+"\n\n")
				f.Flush()
				io.WriteString(w, event[:cut])
				f.Flush()
				io.WriteString(w, event[cut:])
				f.Flush()
			}))
			sc, err := New(Config{APIKey: fakeKey, BaseURL: srv.URL + "/v1", MaxRetries: -1, Logger: logger})
			require.NoError(t, err)
			s, err := sc.CreateChatCompletionStream(ctx, userMsg(name))
			require.NoError(t, err, name)
			var recvErr error
			for recvErr == nil {
				var chunk openai.ChatCompletionStreamResponse
				chunk, recvErr = s.Recv()
				record(name+" chunk", chunk)
			}
			record(name+" Recv error", recvErr)
			assert.Zero(t, strings.Count(fmt.Sprintf("%v", recvErr), leakMarker), "%s: Recv's error quotes the key", name)
			require.NoError(t, s.Close())
			require.NoError(t, sc.Shutdown(ctx))
			srv.Close()
		}
	})

	t.Run("timeouts and deadlines", func(t *testing.T) {
		// One for the attempt (a silent target is not tried twice by one
		// call), one for the caller's deadline.
		srv.Script(llmtest.Hang(), llmtest.Hang())
		tc := newTestClient(t, srv, Config{Logger: logger, AttemptTimeout: 20 * time.Millisecond, MaxRetries: 1})
		_, err := tc.Chat(ctx, "attempts time out")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		record("attempt timeout", err)
		dctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		defer cancel()
		_, err = c.Chat(dctx, "caller deadline")
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		record("caller deadline", err)
		waitFor(t, func() bool { return srv.Stats().InFlight == 0 })
	})

	t.Run("connection refused and redirect", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		ln.Close()
		rc, err := New(Config{APIKey: fakeKey, BaseURL: "http://" + addr + "/v1", MaxRetries: 1, Logger: logger})
		require.NoError(t, err)
		_, err = rc.Chat(ctx, "nobody there")
		require.Error(t, err)
		record("refused", err)

		srv.Script(llmtest.Status(307).WithHeader("Location", "http://"+addr+"/elsewhere"))
		_, err = c.Chat(ctx, "redirected")
		require.Error(t, err)
		record("redirect", err)
	})

	t.Run("status line quoting the key", func(t *testing.T) {
		for name, response := range map[string]string{
			"reason phrase":         "HTTP/1.1 503 Bad key " + fakeKey + "\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad",
			"reason phrase, JSON":   "HTTP/1.1 429 Slow down " + fakeKey + "\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n" + `{"error":{"message":"bad"}}`,
			"malformed status code": "HTTP/1.1 " + fakeKey + " oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
			"malformed status line": "HTTP/1.1+" + fakeKey + "\r\n\r\n",
		} {
			rs := newRecorder(t, response)
			rc, err := New(Config{APIKey: fakeKey, BaseURL: "http://" + rs.addr() + "/v1", MaxRetries: 1, Logger: logger,
				Backoff: func() backoff.BackOff { return &backoff.ZeroBackOff{} }})
			require.NoError(t, err)
			_, err = rc.Chat(ctx, name)
			require.Error(t, err)
			record(name, err)
			s, err := rc.CreateChatCompletionStream(ctx, userMsg(name))
			require.Error(t, err)
			record(name+", stream", err)
			record(name+", stream value", s)
			require.NoError(t, rc.Shutdown(ctx))
		}
	})

	t.Run("fallback targets with keys of their own", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		down := "http://" + ln.Addr().String() + "/v1"
		ln.Close()
		fb := llmtest.NewServer(llmtest.WithAPIKey(fallbackKey), llmtest.WithModels())
		defer fb.Close()
		echo := `{"error":{"message":"bad key ` + fallbackKey + ` or ` + fakeKey + `"}}`
		fb.Script(llmtest.Status(500).WithBody(echo), llmtest.Status(400).WithBody(echo))
		rs := newRecorder(t, "HTTP/1.1 503 Bad key "+fallbackKey+"\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad")
		cfg := Config{APIKey: fakeKey, BaseURL: down, FailoverAfter: 1, MaxRetries: 2, Logger: logger,
			Backoff:   func() backoff.BackOff { return &backoff.ZeroBackOff{} },
			Fallbacks: []Target{{BaseURL: fb.URL, APIKey: fallbackKey, Model: "fb"}, {BaseURL: "http://" + rs.addr() + "/v1", APIKey: fallbackKey}}}
		record("config with fallbacks", cfg)
		for _, tg := range cfg.Fallbacks {
			record("target", tg)
			record("target pointer", &tg)
		}
		fc, err := New(cfg)
		require.NoError(t, err)
		record("client with fallbacks", fc)
		_, err = fc.Chat(ctx, "echoed by the fallbacks")
		require.Error(t, err)
		record("fallbacks echoing their key", err)
		_, err = fc.Chat(ctx, "echoed in a 400")
		require.Error(t, err)
		record("fallback's 400 echoing its key", err)
		s, err := fc.CreateChatCompletionStream(ctx, userMsg("a stream through the fallback"))
		if err == nil {
			_, err = readStream(s)
			s.Close()
		}
		record("fallback stream", err)
		assert.Equal(t, 3, fb.Stats().Requests, "the calls went to the fallback")
		require.NoError(t, fc.Shutdown(ctx))
		_, err = New(Config{APIKey: fakeKey, Fallbacks: []Target{{BaseURL: "https://u:" + fallbackKey + "@x.example.com", APIKey: fallbackKey + " "}}})
		require.ErrorIs(t, err, ErrInvalidConfig)
		record("bad fallback", err)
	})

	t.Run("wrong key", func(t *testing.T) {
		wc := newTestClient(t, srv, Config{APIKey: wrongKey, Logger: logger})
		_, err := wc.Chat(ctx, "let me in")
		assert.True(t, isAPIError(401)(err), "%v", err)
		record("401", err)
		record("wrong-key client", wc)
	})

	t.Run("batch with a journal", func(t *testing.T) {
		srv.Script(llmtest.Status(401).WithBody(echo))
		bc := newTestClient(t, srv, Config{Logger: logger, MaxConcurrent: 1})
		journal := filepath.Join(t.TempDir(), "batch.jsonl")
		var progress []string
		res, err := bc.Batch(ctx, []Task{{ID: "echoed", Prompt: "one"}, {ID: "fine", Prompt: "two"}},
			BatchOptions{Concurrency: 1, Journal: journal, OnProgress: func(p Progress) { progress = append(progress, p.String()) }})
		require.NoError(t, err)
		assert.Equal(t, 1, res.Failed)
		record("batch result", res)
		for _, r := range res.Results {
			record("task "+r.ID, r)
			if r.Err != nil {
				record("task error "+r.ID, r.Err)
			}
		}
		out.add("progress", strings.Join(progress, "\n"))
		b, err := os.ReadFile(journal)
		require.NoError(t, err)
		assert.Contains(t, string(b), "[redacted]", "the failed task's error is journalled, scrubbed")
		out.add("journal", string(b))
	})

	t.Run("drains", func(t *testing.T) {
		dc := newTestClient(t, srv, Config{Logger: logger})
		srv.Script(llmtest.Hang())
		errc := make(chan error, 1)
		go func() { _, err := dc.Chat(ctx, "hangs"); errc <- err }()
		waitInFlight(t, srv, 1)
		sd := &Shutdown{Timeout: 50 * time.Millisecond, Logger: logger}
		sd.Register("llm", dc.Shutdown)
		sd.Trigger()
		err := sd.Run(ctx)
		var fe *ForcedDrainError
		require.ErrorAs(t, err, &fe)
		record("shutdown", err)
		record("forced drain", fe)
		record("stragglers", fe.Stragglers)
		callErr := <-errc
		assert.ErrorIs(t, callErr, ErrForcedShutdown)
		record("forced call", callErr)
		_, err = dc.Chat(ctx, "late")
		assert.ErrorIs(t, err, ErrDraining)
		record("draining", err)
		_, err = dc.CreateChatCompletionStream(ctx, userMsg("late"))
		assert.ErrorIs(t, err, ErrDraining)
		record("draining stream", err)
	})

	t.Run("config", func(t *testing.T) {
		t.Setenv(EnvAPIKey, "")
		cfg := Config{APIKey: fakeKey, BaseURL: "https://api.example.com/v1", FallbackURLs: []string{"https://backup.example.com/v1"}, Logger: logger}
		record("config", cfg)
		record("config pointer", &cfg)
		record("config in a struct", struct{ C Config }{cfg})
		for name, bad := range map[string]Config{
			"newline":            {APIKey: fakeKey + "\n"},
			"space":              {APIKey: "sk-llmdrain-FAKE key"},
			"control":            {APIKey: fakeKey + "\x00"},
			"key as password":    {APIKey: fakeKey, BaseURL: "https://user:" + fakeKey + "@api.example.com/v1"},
			"key in fallback":    {APIKey: fakeKey, FallbackURLs: []string{"https://:" + fakeKey + "@b.example.com/v1"}},
			"key as user name":   {APIKey: fakeKey, BaseURL: "http://" + fakeKey + "@10.0.0.1/v1"},
			"key in a query":     {APIKey: fakeKey, BaseURL: "https://api.example.com/v1?api-key=" + fakeKey},
			"key in a fragment":  {APIKey: fakeKey, FallbackURLs: []string{"https://api.example.com/v1#" + fakeKey}},
			"everything invalid": {APIKey: fakeKey + " ", BaseURL: "ftp://u:" + fakeKey + "@x", MaxConcurrent: -1, AttemptTimeout: -1},
		} {
			_, err := New(bad)
			require.ErrorIs(t, err, ErrInvalidConfig, name)
			record("config error "+name, err)
			record("bad config "+name, bad)
		}
	})

	t.Run("client", func(t *testing.T) {
		record("client", c)
		record("client value", *c)
		record("go-openai client", c.OpenAI())
		record("tracker", c.Tracker())
	})

	t.Run("panics", func(t *testing.T) {
		panicky := newTestClient(t, srv, Config{Logger: logger, ShouldRetry: func(resp *http.Response, err error) bool {
			panic(fmt.Sprintf("retry policy failed on %v %v", resp.Status, err))
		}})
		srv.Script(llmtest.Status(500))
		for name, call := range map[string]func(){
			"ShouldRetry": func() { _, _ = panicky.Chat(ctx, "panic") },
			"zero Client": func() { _, _ = new(Client).Chat(ctx, "panic") },
			"nil Client":  func() { _ = (*Client)(nil).String() },
		} {
			var recovered any
			var stack []byte
			func() {
				defer func() {
					recovered = recover()
					stack = debug.Stack()
				}()
				call()
			}()
			require.NotNil(t, recovered, name)
			out.add("panic "+name, fmt.Sprintf("%v\n%s", recovered, stack))
		}
	})

	out.add("logs", logs.String())
	assert.Contains(t, logs.String(), "llmdrain: retrying", "retries are logged")
	assert.Contains(t, logs.String(), "shutdown", "the shutdown is logged")
	leaks := 0
	for _, o := range out.all {
		if strings.Contains(o.text, leakMarker) {
			leaks++
			if leaks <= 10 {
				t.Errorf("the key leaked in %s:\n%s", o.label, excerpt(o.text, leakMarker))
			}
		}
	}
	assert.Zero(t, leaks, "outputs containing the key, of %d", len(out.all))
}

// excerpt shows where needle stands in s, with needle itself masked: a
// test failure message must not carry the key either.
func excerpt(s, needle string) string {
	i := strings.Index(s, needle)
	return strings.ReplaceAll(s[max(0, i-200):min(len(s), i+200)], needle, "<KEY MARKER HERE>")
}

func isAPIError(code int) func(error) bool {
	return func(err error) bool {
		var apiErr *openai.APIError
		return errors.As(err, &apiErr) && apiErr.HTTPStatusCode == code
	}
}

func isRequestError(code int) func(error) bool {
	return func(err error) bool {
		var reqErr *openai.RequestError
		return errors.As(err, &reqErr) && reqErr.HTTPStatusCode == code
	}
}

func isUnexpectedEOF(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }

// TestExampleServerNeverLogsKey builds examples/server and runs it with the
// fake key against llmtest at debug level, through successes, failures (the
// API echoing the key among them), a cut stream and a SIGTERM: neither its
// logs nor its answers may contain the key.
func TestExampleServerNeverLogsKey(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs examples/server")
	}
	if _, err := os.Stat(filepath.Join("examples", "server", "main.go")); err != nil {
		t.Skip("no examples/server to run")
	}
	goCmd, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build examples/server with")
	}
	bin := filepath.Join(t.TempDir(), "server")
	// examples/server is a module of its own: build it in its directory.
	build := exec.Command(goCmd, "build", "-o", bin, ".")
	build.Dir = filepath.Join("examples", "server")
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod") // as .ci/run builds its module
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building examples/server: %v\n%s", err, out)
	}

	llm := newServer(t)
	echo := `{"error":{"message":"Incorrect API key provided: ` + fakeKey + `","type":"invalid_request_error"}}`
	llm.Script(llmtest.Status(401).WithBody(echo), llmtest.Status(400).WithBody(echo))
	llm.Script(repeat(llmtest.Status(503).WithBody("upstream says "+fakeKey), 4)...)
	llm.Script(llmtest.Truncate(1))

	cmd := exec.Command(bin)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOLYSHEEP_") && !strings.HasPrefix(kv, "LOG_LEVEL=") && !strings.HasPrefix(kv, "ADDR=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, EnvAPIKey+"="+fakeKey, EnvBaseURL+"="+llm.URL, "ADDR=127.0.0.1:0", "LOG_LEVEL=debug")
	var stdout, stderr syncBuffer
	cmd.Stdout = &stdout
	pipe, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	addrc := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			fmt.Fprintln(&stderr, sc.Text())
			var rec struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &rec) == nil && rec.Msg == "listening" {
				addrc <- rec.Addr
			}
		}
	}()
	exited := make(chan error, 1)
	go func() { <-scanned; exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-scanned
	})

	var addr string
	select {
	case addr = <-addrc:
	case err := <-exited:
		t.Fatalf("examples/server exited (%v) before listening:\n%s", err, stderr.String())
	case <-time.After(20 * time.Second):
		t.Fatalf("examples/server never logged its address:\n%s", stderr.String())
	}

	hc := &http.Client{Transport: &http.Transport{}, Timeout: 20 * time.Second}
	defer hc.CloseIdleConnections()
	var answers []string
	generate := func(body string) int {
		resp, err := hc.Post("http://"+addr+"/v1/generate", "application/json", strings.NewReader(body))
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		answers = append(answers, fmt.Sprintf("%d %s", resp.StatusCode, b))
		return resp.StatusCode
	}
	// The statuses are the example's business; what matters here is that
	// each path ran.
	assert.NotEqual(t, http.StatusOK, generate(`{"prompt":"401 echoing the key"}`))
	assert.NotEqual(t, http.StatusOK, generate(`{"prompt":"400 echoing the key"}`))
	assert.NotEqual(t, http.StatusOK, generate(`{"prompt":"503 until the retries run out"}`))
	generate(`{"prompt":"a stream cut off","stream":true}`)
	assert.Equal(t, http.StatusOK, generate(`{"prompt":"hello"}`))
	assert.Equal(t, http.StatusOK, generate(`{"prompt":"a whole stream","stream":true}`))
	assert.NotEqual(t, http.StatusOK, generate(`{"prompt":`))
	assert.Equal(t, 9, settled(t, llm).Stats().Requests, "every scripted answer was used")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	select {
	case err := <-exited:
		assert.NoError(t, err, "examples/server exit")
	case <-time.After(30 * time.Second):
		t.Fatal("examples/server did not exit after SIGTERM")
	}

	logs := stderr.String() + stdout.String()
	assert.Contains(t, logs, "llmdrain: retrying", "the client's retries are logged")
	assert.Contains(t, logs, `"level":"DEBUG"`, "debug level is on")
	for name, text := range map[string]string{"logs": logs, "answers": strings.Join(answers, "\n")} {
		if strings.Contains(text, leakMarker) {
			t.Errorf("the key leaked in the example server's %s:\n%s", name, excerpt(text, leakMarker))
		}
	}
}
