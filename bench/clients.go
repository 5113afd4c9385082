package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/llmdrain/llmdrain"
	oai "github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	goopenai "github.com/sashabaranov/go-openai"
)

const (
	benchKey   = "sk-bench-not-a-real-key"
	benchModel = "gpt-4o"
)

// caller is one contender: a client making one chat completion per call.
type caller struct {
	name  string
	call  func(ctx context.Context) error
	close func() // closes idle connections, and anything else it holds
}

// newTransport is the connection pool every contender gets a clone of, so
// none wins by reusing connections better: keep-alive with room for every
// worker of the widest scenario.
func newTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 30 * time.Second
	return t
}

func chatRequest() goopenai.ChatCompletionRequest {
	return goopenai.ChatCompletionRequest{
		Model:    benchModel,
		Messages: []goopenai.ChatCompletionMessage{{Role: goopenai.ChatMessageRoleUser, Content: "hello"}},
	}
}

// bareGoOpenAI is go-openai as shipped: no retries at all.
func bareGoOpenAI(baseURL string) caller {
	return goOpenAIOver("go-openai (bare)", baseURL, nil)
}

// goOpenAIOver is go-openai on a transport of its own, wrapped by wrap
// if not nil.
func goOpenAIOver(name, baseURL string, wrap func(http.RoundTripper) http.RoundTripper) caller {
	tr := newTransport()
	var rt http.RoundTripper = tr
	if wrap != nil {
		rt = wrap(tr)
	}
	cfg := goopenai.DefaultConfig(benchKey)
	cfg.BaseURL = baseURL
	cfg.HTTPClient = &http.Client{Transport: rt}
	c := goopenai.NewClientWithConfig(cfg)
	return caller{
		name: name,
		call: func(ctx context.Context) error {
			_, err := c.CreateChatCompletion(ctx, chatRequest())
			return err
		},
		close: tr.CloseIdleConnections,
	}
}

// bareCancellable is bare go-openai called as a service calls it: under a
// context of its own per call (a request's), cancellable, cancelled when
// the call returns. net/http then derives its own per-request context
// under a cancellable parent, which costs it more than under
// context.Background, the reference's.
func bareCancellable(baseURL string) caller {
	c := bareGoOpenAI(baseURL)
	call := c.call
	c.name = "go-openai (bare), cancellable context"
	c.call = func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		return call(ctx)
	}
	return c
}

// floorClient is bare go-openai behind the least a client that can end
// calls in flight (a drain forced at its deadline) must do: a
// cancellable context per call, the request copied onto it, and a
// response body that cancels it when closed. What it costs over bare is
// a floor under any such client's overhead, llmdrain's included.
func floorClient(baseURL string) caller {
	return goOpenAIOver("floor: cancellable calls over bare go-openai", baseURL,
		func(base http.RoundTripper) http.RoundTripper { return floorTransport{base} })
}

// floorTransport runs each request in a cancellable context of its own,
// cancelled when its response body is closed (or the request failed).
type floorTransport struct{ base http.RoundTripper }

func (f floorTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancelCause(req.Context())
	resp, err := f.base.RoundTrip(req.WithContext(ctx))
	if err != nil {
		cancel(err)
		return nil, err
	}
	resp.Body = &cancelOnClose{ReadCloser: resp.Body, cancel: cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelCauseFunc
}

func (b *cancelOnClose) Close() error {
	err := b.ReadCloser.Close()
	b.cancel(context.Canceled)
	return err
}

// llmdrainClient is llmdrain with its defaults (DefaultBackoff, three
// retries, no concurrency limit), tuned only through cfg.
func llmdrainClient(name, baseURL string, cfg llmdrain.Config) (caller, *llmdrain.Client) {
	tr := newTransport()
	cfg.APIKey = benchKey
	cfg.BaseURL = baseURL
	cfg.Model = benchModel
	cfg.HTTPClient = &http.Client{Transport: tr}
	c, err := llmdrain.New(cfg)
	if err != nil {
		panic(err)
	}
	return caller{
		name: name,
		call: func(ctx context.Context) error {
			_, err := c.CreateChatCompletion(ctx, chatRequest())
			return err
		},
		close: tr.CloseIdleConnections,
	}, c
}

// openAIGo is the official client with its retry policy as shipped: two
// retries, retry-after-ms then Retry-After honoured up to two minutes,
// otherwise 0.5 s doubling to 8 s with up to 25 % jitter.
func openAIGo(baseURL string) caller {
	tr := newTransport()
	c := oai.NewClient(
		option.WithBaseURL(strings.TrimSuffix(baseURL, "/")+"/"),
		option.WithAPIKey(benchKey),
		option.WithHTTPClient(&http.Client{Transport: tr}),
	)
	params := oai.ChatCompletionNewParams{
		Model:    benchModel,
		Messages: []oai.ChatCompletionMessageParamUnion{oai.UserMessage("hello")},
	}
	return caller{
		name: "openai-go v3 (default retries)",
		call: func(ctx context.Context) error {
			_, err := c.Chat.Completions.New(ctx, params)
			return err
		},
		close: tr.CloseIdleConnections,
	}
}
