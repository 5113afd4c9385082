package llmdrain_test

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"testing"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

const benchKey = "sk-bench-not-a-real-key"

// benchTransport gives each client a keep-alive pool with room for the
// widest benchmark, so neither side pays for new connections.
func benchTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 256
	t.MaxIdleConnsPerHost = 128
	return t
}

// BenchmarkCreateChatCompletion compares a call through llmdrain.Client
// with the same call through the bare go-openai client, against one
// in-process llmtest server with no latency, at concurrency 1 and 32.
// allocs/op counts the whole process, the server's share included; only
// the difference between the two clients is the client's. The overhead
// target (llmdrain at 97 % of bare throughput) is checked by the bench
// program (cd bench && go run .), not here.
func BenchmarkCreateChatCompletion(b *testing.B) {
	srv := llmtest.NewServer()
	defer srv.Close()

	type client struct {
		name string
		call func(ctx context.Context, req openai.ChatCompletionRequest) (openai.ChatCompletionResponse, error)
		tr   *http.Transport
	}
	bareTr := benchTransport()
	cfg := openai.DefaultConfig(benchKey)
	cfg.BaseURL = srv.URL
	cfg.HTTPClient = &http.Client{Transport: bareTr}
	bare := openai.NewClientWithConfig(cfg)

	ldTr := benchTransport()
	ld, err := llmdrain.New(llmdrain.Config{APIKey: benchKey, BaseURL: srv.URL, HTTPClient: &http.Client{Transport: ldTr}})
	if err != nil {
		b.Fatal(err)
	}
	// Its plain-http endpoint has a pool of its own, derived from ldTr.
	defer ld.Shutdown(context.Background())
	// The same with every hook set, doing nothing: what observing costs
	// before a metrics library adds its own.
	hkTr := benchTransport()
	hk, err := llmdrain.New(llmdrain.Config{APIKey: benchKey, BaseURL: srv.URL, HTTPClient: &http.Client{Transport: hkTr}, Hooks: noopHooks()})
	if err != nil {
		b.Fatal(err)
	}
	defer hk.Shutdown(context.Background())
	clients := []client{
		{"gopenai", bare.CreateChatCompletion, bareTr},
		{"llmdrain", ld.CreateChatCompletion, ldTr},
		{"llmdrain-hooks", hk.CreateChatCompletion, hkTr},
	}
	defer func() {
		for _, c := range clients {
			c.tr.CloseIdleConnections()
		}
	}()

	req := func() openai.ChatCompletionRequest {
		return openai.ChatCompletionRequest{
			Model:    openai.GPT4o,
			Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hello"}},
		}
	}
	for _, conc := range []int{1, 32} {
		for _, c := range clients {
			b.Run(fmt.Sprintf("%s/c%d", c.name, conc), func(b *testing.B) {
				ctx := context.Background()
				b.ReportAllocs()
				if conc == 1 {
					for range b.N {
						if _, err := c.call(ctx, req()); err != nil {
							b.Fatal(err)
						}
					}
					return
				}
				b.SetParallelism((conc + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := c.call(ctx, req()); err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}

// noopHooks sets every hook to a function that does nothing: what
// observing costs before a metrics library adds its own.
func noopHooks() *llmdrain.Hooks {
	return &llmdrain.Hooks{
		CallStart:    func(llmdrain.CallStartInfo) {},
		CallDone:     func(llmdrain.CallDoneInfo) {},
		AttemptDone:  func(llmdrain.AttemptInfo) {},
		Waited:       func(llmdrain.WaitInfo) {},
		TargetChange: func(llmdrain.TargetChangeInfo) {},
		DrainStart:   func(llmdrain.DrainStartInfo) {},
		DrainDone:    func(llmdrain.DrainDoneInfo) {},
	}
}
