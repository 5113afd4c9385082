package otelmetrics_test

import (
	"context"
	"net/http"
	"testing"

	openai "github.com/sashabaranov/go-openai"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
	"github.com/llmdrain/llmdrain/otelmetrics"
)

// BenchmarkCall compares a plain call against llmtest through bare
// go-openai (under context.Background, and under a cancellable context
// per call: the floor of any client that can cancel a call in flight),
// through llmdrain with no Hooks (with its defaults, and "lean", with the
// per-attempt bounds that can be turned off turned off), and through
// llmdrain with the metrics recorded into an SDK MeterProvider: run them
// in one go test -bench and compare their ns/op and allocs/op (the
// server's share is the same for all). Each client has a pool of its
// own, a clone of net/http's default transport, as in the bench program.
// It loops b.N times, so that counting instructions at two values of
// -benchtime=Nx gives the cost of one call (bench/instructions.sh).
func BenchmarkCall(b *testing.B) {
	srv := llmtest.NewServer()
	defer srv.Close()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	hooks, err := otelmetrics.New(mp)
	if err != nil {
		b.Fatal(err)
	}
	req := openai.ChatCompletionRequest{Model: openai.GPT4o, Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hello"}}}
	run := func(b *testing.B, call func(context.Context, openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error)) {
		ctx := context.Background()
		b.ReportAllocs()
		for range b.N {
			if _, err := call(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
	}
	pool := func(b *testing.B) *http.Client {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		b.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	bare := func(b *testing.B) *openai.Client {
		cfg := openai.DefaultConfig("sk-bench")
		cfg.BaseURL = srv.URL
		cfg.HTTPClient = pool(b)
		return openai.NewClientWithConfig(cfg)
	}
	b.Run("gopenai", func(b *testing.B) {
		run(b, bare(b).CreateChatCompletion)
	})
	// The floor of any client that can cancel a call in flight: bare
	// go-openai, each call under a context of its own, cancelled after.
	b.Run("gopenai-cancellable", func(b *testing.B) {
		call := bare(b).CreateChatCompletion
		run(b, func(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error) {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			return call(ctx, req)
		})
	})
	// lean is hooks=nil with every per-attempt bound that can be turned
	// off turned off: what those cost is its difference from hooks=nil.
	lean := llmdrain.Config{FirstTokenTimeout: -1, StreamIdleTimeout: -1, AdaptiveCeiling: -1, RetryBudget: -1, MinRetriesPerSecond: -1}
	for _, bc := range []struct {
		name string
		cfg  llmdrain.Config
	}{{"hooks=nil", llmdrain.Config{}}, {"lean", lean}, {"otelmetrics", llmdrain.Config{Hooks: hooks}}} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := bc.cfg
			cfg.APIKey, cfg.BaseURL, cfg.HTTPClient = "sk-bench", srv.URL, pool(b)
			c, err := llmdrain.New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Shutdown(context.Background())
			run(b, c.CreateChatCompletion)
		})
	}
}

// BenchmarkRecord is the metrics' own cost per call: the hooks of a plain
// call with usage and one healthy attempt, without the call.
func BenchmarkRecord(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	h, err := otelmetrics.New(mp)
	if err != nil {
		b.Fatal(err)
	}
	start := llmdrain.CallStartInfo{Operation: llmdrain.OpChat, Model: "gpt-4o", Target: "https://api.example.com/v1"}
	done := llmdrain.CallDoneInfo{CallStartInfo: start, ResponseModel: "gpt-4o-2024-08-06", Target: start.Target,
		Attempts: 1, Usage: llmdrain.Usage{InputTokens: 12, OutputTokens: 340, Known: true}}
	attempt := llmdrain.AttemptInfo{Target: start.Target, Attempt: 1, Status: 200, Outcome: "healthy"}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			h.CallStart(start)
			h.AttemptDone(attempt)
			h.CallDone(done)
		}
	})
}
