package llmdrain_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
)

// cannedAnswer is what llmtest answers to a one-message chat completion.
const cannedAnswer = `{"id":"chatcmpl-1","object":"chat.completion","created":1796168151,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"You said: hello"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}`

// cannedTransport answers every request with cannedAnswer at once,
// reading and closing the request body as net/http would: no socket, no
// server, so all that is measured is the client's own work.
type cannedTransport struct{}

func (cannedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		req.Body.Close()
	}
	return &http.Response{
		Status:        "200 OK",
		StatusCode:    http.StatusOK,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        http.Header{"Content-Type": {"application/json"}, "Content-Length": {strconv.Itoa(len(cannedAnswer))}},
		Body:          io.NopCloser(strings.NewReader(cannedAnswer)),
		ContentLength: int64(len(cannedAnswer)),
		Request:       req,
	}, nil
}

// cannedHTTP is a net/http Transport whose https requests cannedTransport
// answers: the client sees net/http's Transport, as it does by default,
// and nothing goes over a socket.
func cannedHTTP() *http.Transport {
	// A non-nil TLSNextProto keeps net/http from registering HTTP/2 for
	// https, which cannedTransport has taken.
	t := &http.Transport{TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
	t.RegisterProtocol("https", cannedTransport{})
	return t
}

// BenchmarkClientOverhead is BenchmarkCreateChatCompletion without the
// network: every client's transport answers at once from memory, so
// ns/op and allocs/op are the clients' own, and the difference between
// llmdrain and bare go-openai is llmdrain's whole per-call cost, less
// disturbed by the scheduling of a server and its sockets. (On a real
// socket, llmdrain makes no system call that bare go-openai does not.)
func BenchmarkClientOverhead(b *testing.B) {
	for _, c := range overheadClients(b) {
		b.Run(c.name, func(b *testing.B) {
			ctx := context.Background()
			b.ReportAllocs()
			for range b.N {
				if _, err := c.call(ctx, overheadRequest()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// overheadClient is one of the clients BenchmarkClientOverhead compares.
type overheadClient struct {
	name string
	call func(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error)
}

// overheadClients returns bare go-openai, llmdrain, and llmdrain with
// every hook set (no-op), in that order, each on a cannedHTTP transport;
// the llmdrain clients are shut down when b ends.
func overheadClients(b *testing.B) []overheadClient {
	cfg := openai.DefaultConfig(benchKey)
	cfg.BaseURL = "https://api.example.com/v1"
	cfg.HTTPClient = &http.Client{Transport: cannedHTTP()}
	bare := openai.NewClientWithConfig(cfg)
	ld, err := llmdrain.New(llmdrain.Config{APIKey: benchKey, BaseURL: cfg.BaseURL, HTTPClient: &http.Client{Transport: cannedHTTP()}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ld.Shutdown(context.Background()) })
	hk, err := llmdrain.New(llmdrain.Config{APIKey: benchKey, BaseURL: cfg.BaseURL, HTTPClient: &http.Client{Transport: cannedHTTP()}, Hooks: noopHooks()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { hk.Shutdown(context.Background()) })
	return []overheadClient{
		{"gopenai", bare.CreateChatCompletion},
		{"llmdrain", ld.CreateChatCompletion},
		{"llmdrain-hooks", hk.CreateChatCompletion},
	}
}

// overheadRequest is the request every overhead benchmark sends: the
// one-message chat completion cannedAnswer answers.
func overheadRequest() openai.ChatCompletionRequest {
	return openai.ChatCompletionRequest{
		Model:    openai.GPT4o,
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hello"}},
	}
}
