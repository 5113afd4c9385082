package llmdrain_test

import (
	"context"
	"net/http"
	"testing"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

// BenchmarkCostHappyPath measures what cost accounting adds to a plain
// chat completion, side by side: no prices; Prices set (read by batches
// and CallDone only: nothing per call); a CallDone hook without and with
// Prices, the difference being the pricing of each call; and a client-wide budget (MaxCost), which reads each
// request's bounds and each answer's usage, and reserves and settles.
// allocs/op counts the in-process server's share too: compare the rows.
func BenchmarkCostHappyPath(b *testing.B) {
	srv := llmtest.NewServer()
	defer srv.Close()
	prices := llmdrain.Prices{openai.GPT4o: {Input: 2.5, CachedInput: 1.25, Output: 10, MaxOutput: 16384}}
	var spent float64
	hooks := &llmdrain.Hooks{CallDone: func(i llmdrain.CallDoneInfo) { spent += i.Cost.USD }}
	for _, v := range []struct {
		name string
		cfg  llmdrain.Config
	}{
		{"none", llmdrain.Config{}},
		{"prices", llmdrain.Config{Prices: prices}},
		{"hook", llmdrain.Config{Hooks: hooks}},
		{"prices+hook", llmdrain.Config{Prices: prices, Hooks: hooks}},
		{"budget", llmdrain.Config{Prices: prices, MaxCost: 1e6}},
	} {
		b.Run(v.name, func(b *testing.B) {
			tr := benchTransport()
			defer tr.CloseIdleConnections()
			cfg := v.cfg
			cfg.APIKey, cfg.BaseURL, cfg.HTTPClient = benchKey, srv.URL, &http.Client{Transport: tr}
			c, err := llmdrain.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Shutdown(context.Background())
			ctx := context.Background()
			b.ReportAllocs()
			for range b.N {
				req := openai.ChatCompletionRequest{
					Model:    openai.GPT4o,
					Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hello"}},
				}
				if _, err := c.CreateChatCompletion(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
