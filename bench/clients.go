package main

import (
	"context"
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
	tr := newTransport()
	cfg := goopenai.DefaultConfig(benchKey)
	cfg.BaseURL = baseURL
	cfg.HTTPClient = &http.Client{Transport: tr}
	c := goopenai.NewClientWithConfig(cfg)
	return caller{
		name: "go-openai (bare)",
		call: func(ctx context.Context) error {
			_, err := c.CreateChatCompletion(ctx, chatRequest())
			return err
		},
		close: tr.CloseIdleConnections,
	}
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
