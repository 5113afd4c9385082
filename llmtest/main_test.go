package llmtest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/llmdrain/llmdrain/llmtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every request a test makes, so a bug shows up as a
// failure instead of a stuck test binary.
const testTimeout = 10 * time.Second

func newServer(t *testing.T, opts ...llmtest.Option) *llmtest.Server {
	t.Helper()
	srv := llmtest.NewServer(opts...)
	t.Cleanup(srv.Close)
	return srv
}

// newTransport gives a test its own connection pool, emptied at cleanup, so
// keep-alive connections never outlive the test that opened them.
func newTransport(t *testing.T) *http.Transport {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return tr
}

func newClient(t *testing.T, srv *llmtest.Server) *openai.Client {
	t.Helper()
	return newClientWithKey(t, srv, "test")
}

func newClientWithKey(t *testing.T, srv *llmtest.Server, key string) *openai.Client {
	t.Helper()
	cfg := openai.DefaultConfig(key)
	cfg.BaseURL = srv.URL
	cfg.HTTPClient = &http.Client{Transport: newTransport(t)}
	return openai.NewClientWithConfig(cfg)
}

func newHTTPClient(t *testing.T) *http.Client {
	t.Helper()
	return &http.Client{Transport: newTransport(t)}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func chatRequest(prompt string) openai.ChatCompletionRequest {
	return openai.ChatCompletionRequest{
		Model:    "gpt-4o",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: prompt}},
	}
}

// chatBody is the JSON of a one-message chat request.
func chatBody(prompt string, stream bool) string {
	req := chatRequest(prompt)
	req.Stream = stream
	return string(mustMarshal(req))
}

// postChat sends a raw chat completion request.
func postChat(t *testing.T, c *http.Client, srv *llmtest.Server, body string) (*http.Response, error) {
	t.Helper()
	return doRequest(t, c, http.MethodPost, srv.URL+"/chat/completions", body, nil)
}

func doRequest(t *testing.T, c *http.Client, method, url, body string, header http.Header) (*http.Response, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(testContext(t), method, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range header {
		req.Header[k] = vs
	}
	return c.Do(req)
}

// readAll reads and closes a response body.
func readAll(t *testing.T, resp *http.Response) ([]byte, error) {
	t.Helper()
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline. It is for conditions only the server can observe (a handler
// being in flight), not a substitute for synchronising on events.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// settled waits until no chat handler is running and returns the stats. A
// client can see the last byte of a response before its handler has
// recorded the success, so counts are only final once InFlight is zero.
func settled(t *testing.T, srv *llmtest.Server) llmtest.Stats {
	t.Helper()
	waitFor(t, "handlers to finish", func() bool { return srv.Stats().InFlight == 0 })
	return srv.Stats()
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// decodeError checks body is an OpenAI-format error, with message, type and
// code, and returns its type.
func decodeError(t *testing.T, body []byte) string {
	t.Helper()
	var env struct {
		Error map[string]json.RawMessage `json:"error"`
	}
	require.NoError(t, json.Unmarshal(body, &env), "error body %q", body)
	for _, key := range []string{"message", "type", "code"} {
		require.Contains(t, env.Error, key, "error body %s", body)
	}
	var typ string
	require.NoError(t, json.Unmarshal(env.Error["type"], &typ))
	return typ
}
