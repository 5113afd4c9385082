package llmdrain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

const proxyPage = `<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
</body>
</html>
`

// okBody is a complete chat completion as a body of one's own making.
const okBody = `{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"hand made"},"finish_reason":"stop"}]}`

// TestHostileResponses feeds the client malformed, misleading and
// unexpected answers and checks that each ends in an error that says what
// happened (or in the success it really was), after the retries its
// status deserves, with the call released.
func TestHostileResponses(t *testing.T) {
	html := llmtest.Status(502).WithBody(proxyPage).WithHeader("Content-Type", "text/html")
	cases := []struct {
		name     string
		script   []llmtest.Fault
		stream   bool
		requests int
		check    func(t *testing.T, text string, err error)
	}{
		{
			name: "non-JSON error body", script: []llmtest.Fault{llmtest.Status(400).WithBody("not json")}, requests: 1,
			check: requestError(400, "not json"),
		},
		{
			name: "empty object error", script: repeat(llmtest.Status(500).WithBody("{}"), 4), requests: 4,
			check: requestError(500, "{}"),
		},
		{
			name: "null error", script: []llmtest.Fault{llmtest.Status(400).WithBody(`{"error":null}`)}, requests: 1,
			check: requestError(400, `{"error":null}`),
		},
		{
			name: "string error", script: []llmtest.Fault{llmtest.Status(403).WithBody(`{"error":"forbidden"}`)}, requests: 1,
			check: requestError(403, "forbidden"),
		},
		{
			name: "empty error body", script: []llmtest.Fault{llmtest.Status(404).WithBody("")}, requests: 1,
			check: requestError(404, ""),
		},
		{
			name: "HTML 502 from a proxy, every attempt", script: repeat(html, 4), requests: 4,
			check: func(t *testing.T, _ string, err error) {
				requestError(502, "<h1>502 Bad Gateway</h1>")(t, "", err)
				assert.Contains(t, err.Error(), "gave up after 4 attempts")
			},
		},
		{
			name: "HTML 502 from a proxy, then the API", script: []llmtest.Fault{html}, requests: 2,
			check: answered(),
		},
		{
			name: "HTML 502 on a stream", script: repeat(html, 4), stream: true, requests: 4,
			check: requestError(502, "nginx"),
		},
		{
			name:   "200 with an error",
			script: []llmtest.Fault{llmtest.Status(200).WithBody(`{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}`)},
			// Not retried: whatever the envelope says, the status gave no
			// reason to.
			requests: 1,
			check:    apiError(200, "You exceeded your current quota"),
		},
		{
			name:   "200 with an error, spaced out",
			script: []llmtest.Fault{llmtest.Status(200).WithBody(" \n{ \"error\" :\t{\"message\":\"upstream failed\"}}\n")},
			// go-openai wants a type; the envelope still counts.
			requests: 1, check: apiError(200, "upstream failed"),
		},
		{
			name:     "200 with an error on a stream",
			script:   []llmtest.Fault{llmtest.Status(200).WithBody(`{"error":{"message":"model overloaded","type":"server_error"}}`)},
			stream:   true,
			requests: 1, check: apiError(200, "model overloaded"),
		},
		{
			name:     "200 with a null error and an answer",
			script:   []llmtest.Fault{llmtest.Status(200).WithBody(`{"error":null,` + okBody[1:])},
			requests: 1, check: answered("hand made"),
		},
		{
			name:     "200 with an error too large to be one",
			script:   []llmtest.Fault{llmtest.Status(200).WithBody(`{"error":{"message":"` + strings.Repeat("x", 2*maxErrorBody) + `"}}`)},
			requests: 1,
			check: func(t *testing.T, text string, err error) {
				require.Error(t, err, "not a chat completion either")
				var apiErr *openai.APIError
				assert.False(t, errors.As(err, &apiErr), "treated as a normal body")
				assert.ErrorIs(t, err, ErrEmptyResponse, "go-openai decoded it")
			},
		},
		{
			name: "200 HTML login page", script: []llmtest.Fault{llmtest.Status(200).WithBody("<html>sign in to the wifi</html>").WithHeader("Content-Type", "text/html")},
			requests: 1,
			check: func(t *testing.T, text string, err error) {
				require.Error(t, err, "a page is no answer")
				assert.Empty(t, text)
			},
		},
		{
			name:     "200 JSON answer to a stream request",
			script:   []llmtest.Fault{llmtest.Status(200).WithBody(okBody)},
			stream:   true,
			requests: 1,
			check: func(t *testing.T, text string, err error) {
				assert.ErrorIs(t, err, io.ErrUnexpectedEOF, "not a stream, so not a complete one")
			},
		},
		{
			name: "201 empty body", script: []llmtest.Fault{llmtest.Status(201).WithBody("")}, requests: 1,
			check: func(t *testing.T, text string, err error) { require.Error(t, err) },
		},
		{
			name: "garbage Retry-After", requests: 2,
			script: []llmtest.Fault{llmtest.Status(429).WithHeader("Retry-After", "soon").WithHeader("retry-after-ms", "-1")},
			check:  answered(),
		},
		{
			name: "Retry-After of centuries", requests: 1,
			script: []llmtest.Fault{llmtest.Status(503).WithHeader("Retry-After", "99999999999999999999")},
			check:  retryRefused(503),
		},
		{
			name: "Retry-After in the year 9999", requests: 1,
			script: []llmtest.Fault{llmtest.Status(429).WithHeader("Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT")},
			check:  retryRefused(429),
		},
		{
			name: "retry-after-ms of 1e300", requests: 1,
			script: []llmtest.Fault{llmtest.Status(429).WithHeader("retry-after-ms", "1e300")},
			check:  retryRefused(429),
		},
		{
			name: "x-should-retry on a 200 error", requests: 1,
			script: []llmtest.Fault{llmtest.Status(200).WithBody(`{"error":{"message":"busy"}}`).WithHeader("x-should-retry", "false")},
			check:  apiError(200, "busy"),
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := newServer(t)
			srv.Script(c.script...)
			cl := newTestClient(t, srv, Config{})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			prompt := "hostile " + c.name
			var text string
			var err error
			if c.stream {
				text, err = soakStream(ctx, cl, prompt, false)
			} else {
				text, err = plainChat(ctx, cl, prompt)
			}
			if err == nil && text != "hand made" {
				assert.Equal(t, llmtest.Reply(prompt), text)
			}
			c.check(t, text, err)
			assert.Equal(t, c.requests, srv.Stats().Requests, "attempts")
			assert.Equal(t, 0, cl.Tracker().InFlight())
		})
	}
}

func repeat(f llmtest.Fault, n int) []llmtest.Fault {
	fs := make([]llmtest.Fault, n)
	for i := range fs {
		fs[i] = f
	}
	return fs
}

func requestError(code int, body string) func(*testing.T, string, error) {
	return func(t *testing.T, _ string, err error) {
		t.Helper()
		var reqErr *openai.RequestError
		require.ErrorAs(t, err, &reqErr)
		assert.Equal(t, code, reqErr.HTTPStatusCode)
		assert.Contains(t, string(reqErr.Body), body)
	}
}

func apiError(code int, message string) func(*testing.T, string, error) {
	return func(t *testing.T, _ string, err error) {
		t.Helper()
		var apiErr *openai.APIError
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, code, apiErr.HTTPStatusCode)
		assert.Equal(t, message, apiErr.Message)
		assert.Contains(t, err.Error(), "an error in a successful response")
	}
}

// retryRefused checks that a call whose server asked for an absurd wait
// ended at once with the server's error.
func retryRefused(code int) func(*testing.T, string, error) {
	return func(t *testing.T, _ string, err error) {
		t.Helper()
		var apiErr *openai.APIError
		require.ErrorAs(t, err, &apiErr)
		assert.Equal(t, code, apiErr.HTTPStatusCode)
		assert.Contains(t, err.Error(), "above the 1m0s cap")
	}
}

func answered(text ...string) func(*testing.T, string, error) {
	return func(t *testing.T, got string, err error) {
		t.Helper()
		require.NoError(t, err)
		if len(text) > 0 {
			assert.Equal(t, text[0], got)
		}
	}
}

// endlessServer answers every request with status and a body of up to
// size bytes that looks like the start of a JSON error and never ends it,
// written until the client stops reading. It reports how much it wrote.
func endlessServer(t *testing.T, status int, size int64) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var written atomic.Int64
	chunk := bytes.Repeat([]byte("x"), 32<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		n, _ := io.WriteString(w, `{"error":{"message":"`)
		written.Add(int64(n))
		for written.Load() < size {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv, &written
}

// TestGiganticErrorBodyIsBounded sends a 100 MB error body. go-openai
// reads error bodies whole; the client must stop at maxErrorBody instead:
// the server cannot write much more than the sockets buffer, and the
// client's allocations stay far below the body's size.
func TestGiganticErrorBodyIsBounded(t *testing.T) {
	const size = 100 << 20
	for _, c := range []struct {
		name   string
		status int
		stream bool
	}{
		{"plain 400", 400, false},
		{"stream 400", 400, true},
		{"plain 503 retried", 503, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv, written := endlessServer(t, c.status, size)
			cl, err := New(Config{APIKey: fakeKey, BaseURL: srv.URL + "/v1", MaxRetries: 2,
				HTTPClient: &http.Client{Transport: &http.Transport{}},
				Backoff:    func() backoff.BackOff { return &backoff.ZeroBackOff{} }})
			require.NoError(t, err)
			defer cl.Shutdown(context.Background())

			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			if c.stream {
				_, err = cl.CreateChatCompletionStream(ctx, userMsg("x"))
			} else {
				_, err = plainChat(ctx, cl, "x")
			}
			runtime.ReadMemStats(&after)

			var reqErr *openai.RequestError
			require.ErrorAs(t, err, &reqErr)
			assert.Equal(t, c.status, reqErr.HTTPStatusCode)
			assert.LessOrEqual(t, len(reqErr.Body), maxErrorBody)
			assert.Greater(t, len(reqErr.Body), maxErrorBody/2, "the start of the body is kept for the error")
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("server wrote %d MB, client allocated %d MB", written.Load()>>20, alloc>>20)
			assert.Less(t, alloc, uint64(40<<20), "allocated %d bytes for a %d-byte body", alloc, size)
			srv.CloseClientConnections()
			srv.Close() // waits for the handlers: written is final
			assert.Less(t, written.Load(), int64(size/2), "the client read the whole body")
			assert.Equal(t, 0, cl.Tracker().InFlight())
		})
	}
}

// TestEnvelopeStart checks how much of a body's start is needed to tell an
// error envelope.
func TestEnvelopeStart(t *testing.T) {
	cases := []struct {
		head        string
		is, decided bool
	}{
		{`{"error":{`, true, true},
		{` { "error" : { "message"`, true, true},
		{`{"\u0065rror":{`, true, true},
		{`{"error":null`, false, true},
		{`{"error":"x"`, false, true},
		{`{"id":"chatcmpl`, false, true},
		{`[`, false, true},
		{`<html>`, false, true},
		{``, false, false},
		{`   `, false, false},
		{`{`, false, false},
		{`{"err`, false, false},
		{`{"error"`, false, false},
		{`{"error":`, false, false},
	}
	for _, c := range cases {
		is, decided := envelopeStart([]byte(c.head))
		assert.Equal(t, c.is, is, "%q", c.head)
		assert.Equal(t, c.decided, decided, "%q", c.head)
	}
}

// chunkReader returns its bytes at most n at a time, as a network does,
// then err (io.EOF if nil).
type chunkReader struct {
	b   []byte
	n   int
	err error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		return 0, io.EOF
	}
	k := copy(p[:min(len(p), r.n)], r.b)
	r.b = r.b[k:]
	return k, nil
}

func (r *chunkReader) Close() error { return nil }

var errCut = errors.New("connection cut")

// FuzzEnvelopeBody checks, over arbitrary bodies arriving in arbitrary
// chunks, that a successful body is passed on byte for byte unless it is an
// error envelope, which becomes an *openai.APIError; and that a body cut
// short is passed on with its error, never taken for an envelope. The high
// bit of chunk cuts the body.
func FuzzEnvelopeBody(f *testing.F) {
	f.Add([]byte(okBody), uint8(7))
	f.Add([]byte(`{"error":{"message":"m","type":"t"}}`), uint8(3))
	f.Add([]byte(`{"error":null,"id":"x"}`), uint8(1))
	f.Add([]byte(` {"error":{"message":["a","b"]}}`), uint8(200))
	f.Add([]byte(`{"error":{}}`), uint8(2))
	f.Add([]byte(`{"error":{"message":"m"}}`), uint8(0x83))
	f.Fuzz(func(t *testing.T, body []byte, chunk uint8) {
		resp := &http.Response{Status: "200 OK", StatusCode: 200}
		rc := &chunkReader{b: body, n: int(chunk)%64 + 1}
		if chunk&0x80 != 0 {
			rc.err = errCut
		}
		eb := &envelopeBody{rc: rc, resp: resp, key: fakeKey, apiError: envelopeError}
		got, err := io.ReadAll(eb)
		if rc.err != nil {
			if err != errCut || !bytes.Equal(got, body) {
				t.Fatalf("%q cut: read as %q, %v", body, got, err)
			}
			return
		}
		var apiErr *openai.APIError
		if errors.As(err, &apiErr) {
			is, _ := envelopeStart(body)
			if !is || len(got) != 0 || apiErr.HTTPStatusCode != 200 {
				t.Fatalf("%q: APIError %v after %q (envelope start: %v)", body, apiErr, got, is)
			}
			return
		}
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%q read as %q, %v", body, got, err)
		}
	})
}

func TestScrub(t *testing.T) {
	key := secret(fakeKey)
	assert.Equal(t, "a [redacted] b [redacted]", string(scrub([]byte("a "+fakeKey+" b "+fakeKey), key, false)))
	assert.Equal(t, "x", string(scrub([]byte("x"), "", false)))
	// A body cut within the key loses the key's start too.
	for i := 1; i < len(fakeKey); i++ {
		cut := []byte("message: " + fakeKey[:i])
		got := string(scrub(cut, key, true))
		assert.NotContains(t, got, fakeKey[:min(i, 8)], "cut after %d bytes", i)
	}
	assert.Equal(t, "", string(scrub([]byte("sk"), key, true)))
}

// TestPanickingCallbackReleasesCall has the caller's ShouldRetry, Backoff
// and Logger panic in the middle of a call. The panic reaches the caller,
// but the call is released: a later drain does not wait for it.
func TestPanickingCallbackReleasesCall(t *testing.T) {
	boom := func() bool { panic("boom") }
	cases := map[string]Config{
		"ShouldRetry": {ShouldRetry: func(*http.Response, error) bool { return boom() }},
		"Backoff":     {Backoff: func() backoff.BackOff { boom(); return nil }},
		"Logger":      {Logger: panicLogger()},
	}
	for name, cfg := range cases {
		t.Run(name, func(t *testing.T) {
			srv := newServer(t)
			srv.Script(llmtest.Status(503))
			cfg.MaxConcurrent = 1
			c := newTestClient(t, srv, cfg)
			var recovered any
			func() {
				defer func() { recovered = recover() }()
				_, _ = c.Chat(context.Background(), "x")
			}()
			assert.Equal(t, "boom", fmt.Sprint(recovered))
			assert.Equal(t, 0, c.Tracker().InFlight())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			start := time.Now()
			require.NoError(t, c.Shutdown(ctx))
			assert.Less(t, time.Since(start), time.Second)
		})
	}
}

// TestRedirectKeyStaysHome follows redirects to places Go's own policy
// would send the Authorization header to (a subdomain, plain http on the
// same host) and others: the key goes to the configured endpoints only.
func TestRedirectKeyStaysHome(t *testing.T) {
	cases := []struct {
		location string
		key      bool
	}{
		{"https://evil.example.net/v1/chat/completions", false},
		{"https://eu.api.example.com/v1/chat/completions", false},
		{"http://api.example.com/v1/chat/completions", false},
		{"https://api.example.com:8443/v1/chat/completions", false},
		{"https://api.example.com/v2/chat/completions", true},
		{"https://API.example.com/v1/chat/completions", true},
		{"https://backup.example.org/v1/chat/completions", true}, // a fallback endpoint
	}
	for _, c := range cases {
		t.Run(c.location, func(t *testing.T) {
			rt := &redirector{location: c.location}
			cl, err := New(Config{APIKey: fakeKey, BaseURL: "https://api.example.com/v1",
				FallbackURLs: []string{"https://backup.example.org/v1"},
				HTTPClient:   &http.Client{Transport: rt}})
			require.NoError(t, err)
			text, err := plainChat(context.Background(), cl, "x")
			require.NoError(t, err)
			assert.Equal(t, "hand made", text)
			require.Len(t, rt.auth, 2)
			assert.Equal(t, "Bearer "+fakeKey, rt.auth[0], "the endpoint gets the key")
			if c.key {
				assert.Equal(t, "Bearer "+fakeKey, rt.auth[1])
			} else {
				assert.Empty(t, rt.auth[1], "key sent to %s", c.location)
			}
		})
	}
}

// redirector is a base transport that answers its first request with a 307
// to location and the next with a chat completion, and records the
// Authorization header of each.
type redirector struct {
	location string
	mu       sync.Mutex
	auth     []string
}

func (r *redirector) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	r.auth = append(r.auth, req.Header.Get("Authorization"))
	resp := &http.Response{StatusCode: 200, Status: "200 OK", Header: http.Header{}, Request: req,
		Body: io.NopCloser(strings.NewReader(okBody))}
	resp.Header.Set("Content-Type", "application/json")
	if len(r.auth) == 1 {
		resp.StatusCode, resp.Status = 307, "307 Temporary Redirect"
		resp.Header.Set("Location", r.location)
		resp.Body = io.NopCloser(strings.NewReader(""))
	}
	return resp, nil
}

// panicLogger panics on every record.
func panicLogger() *slog.Logger { return slog.New(panicHandler{}) }

type panicHandler struct{}

func (panicHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (panicHandler) Handle(context.Context, slog.Record) error { panic("boom") }
func (h panicHandler) WithAttrs([]slog.Attr) slog.Handler      { return h }
func (h panicHandler) WithGroup(string) slog.Handler           { return h }

// FuzzConfig checks config validation over arbitrary keys, URLs and
// numbers: it never panics; an accepted config has a printable key without
// whitespace and only endpoints that are https, or http on a loopback host,
// without credentials, query or fragment, under which request paths land
// where they should; a rejected one gives *ConfigErrors matching
// ErrInvalidConfig; and neither the errors nor the printed config depend on
// the key, beyond whether it is valid.
func FuzzConfig(f *testing.F) {
	f.Setenv(EnvAPIKey, "")
	f.Setenv(EnvBaseURL, "")
	f.Add(fakeKey, "https://api.holysheep.ai/v1", "", int64(0), int64(0), 0, 0, 0)
	f.Add(fakeKey+"\n", "http://127.0.0.1:8080/v1/", "https://backup.example.com/v1", int64(-1), int64(-1), -1, -1, -1)
	f.Add("sk-\x00", "ftp://x", "http://10.0.0.1/v1", int64(time.Second), int64(time.Hour), 4, 2, 5)
	f.Add("", "https://user:"+fakeKey+"@api.example.com/v1", "http://[::1]:1/v1", int64(1), int64(1), 1, 1, 1)
	f.Add("k", "https://h/v1?", "https://h/v1#", int64(0), int64(0), 0, 0, 0)
	f.Add("sk-é", "http://LOCALHOST/v1", "http://llm.localhost/v1", int64(0), int64(0), 0, 0, 0)
	f.Add("k", "HTTP://127.0.0.1:8080/v1", "https://Backup.Example.com/v1/", int64(0), int64(0), 0, 0, 0)
	f.Fuzz(func(t *testing.T, key, base, fallback string, attempt, retryAfter int64, concurrent, failover, retries int) {
		cfg := Config{APIKey: key, BaseURL: base, AttemptTimeout: time.Duration(attempt), MaxRetryAfter: time.Duration(retryAfter),
			MaxConcurrent: concurrent, FailoverAfter: failover, MaxRetries: retries, Model: "m"}
		if fallback != "" {
			cfg.FallbackURLs = []string{fallback}
		}
		r, err := resolve(cfg)
		c, nerr := New(cfg)
		if (err == nil) != (nerr == nil) || (err != nil && err.Error() != nerr.Error()) {
			t.Fatalf("resolve says %v, New says %v", err, nerr)
		}

		// The key shows only through its class: empty, with whitespace,
		// non-printable, or valid (as resolve checks, in that order).
		other := Config(cfg)
		switch {
		case key == "":
		case strings.IndexFunc(key, unicode.IsSpace) >= 0:
			other.APIKey = "sk- other"
		case strings.IndexFunc(key, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0:
			other.APIKey = "sk-\x01other"
		default:
			other.APIKey = "sk-other"
		}
		_, oerr := resolve(other)
		if fmt.Sprint(err) != fmt.Sprint(oerr) {
			t.Fatalf("the error depends on the key:\n%v\n%v", err, oerr)
		}
		for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
			if a, b := fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, other); a != b {
				t.Fatalf("%s of the config depends on the key:\n%s\n%s", verb, a, b)
			}
		}

		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("%v does not match ErrInvalidConfig", err)
			}
			var ce *ConfigError
			if !errors.As(err, &ce) || ce.Field == "" {
				t.Fatalf("%v: no *ConfigError naming a field", err)
			}
			if c != nil {
				t.Fatal("New returned a client with an error")
			}
			return
		}
		if r.APIKey == "" || strings.IndexFunc(r.APIKey, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0 {
			t.Fatalf("accepted key %q", r.APIKey)
		}
		if r.MaxRetries < 0 || r.AttemptTimeout < 0 || r.MaxRetryAfter <= 0 || r.FailoverAfter <= 0 || r.MaxConcurrent < 0 {
			t.Fatalf("accepted numbers %+v", r)
		}
		for _, ep := range r.endpoints {
			u, err := url.Parse(ep)
			if err != nil {
				t.Fatalf("accepted endpoint %q: %v", ep, err)
			}
			switch {
			case u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname())):
				t.Fatalf("accepted endpoint %q: key sent in clear", ep)
			case u.User != nil, u.Hostname() == "":
				t.Fatalf("accepted endpoint %q: credentials or no host", ep)
			}
			// go-openai appends the path to the endpoint as a string.
			call, err := url.Parse(ep + "/chat/completions")
			if err != nil || call.Host != u.Host || !strings.HasSuffix(call.Path, "/chat/completions") || call.RawQuery != "" || call.Fragment != "" {
				t.Fatalf("accepted endpoint %q: a call goes to %v", ep, call)
			}
			if u.Scheme != strings.ToLower(u.Scheme) || u.Host != strings.ToLower(u.Host) && !strings.Contains(u.Host, "%") || strings.HasSuffix(ep, "/") {
				t.Fatalf("endpoint %q is not normalised", ep)
			}
		}
		// Failover moves a call built against the primary endpoint to each
		// of the others, and the key goes with it.
		rt := c.http.Transport.(*transport).router
		first, _ := url.Parse(r.endpoints[0] + "/chat/completions")
		for i, ep := range r.endpoints {
			moved, ok := first, true
			if i > 0 {
				moved, ok = rt.url(first, rt.targets[i])
			}
			want, _ := url.Parse(ep + "/chat/completions")
			_, keyed := rt.bearer(moved)
			if !ok || moved.String() != want.String() || !keyed {
				t.Fatalf("a call to %v is moved to endpoint %q as %v (%v), key: %v", first, ep, moved, ok, keyed)
			}
		}
		// The client's printout does not depend on the key (a key that
		// happens to be part of the host name is no leak).
		if oc, err := New(other); err != nil || oc.String() != c.String() {
			t.Fatalf("the client's printout depends on its key (%v):\n%s\n%v", err, c, oc)
		}
	})
}
