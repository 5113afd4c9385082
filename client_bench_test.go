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
	clients := socketClients(b, srv.URL)
	req := overheadRequest
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

// socketClients returns BenchmarkClientOverhead's clients (bare go-openai,
// llmdrain, llmdrain with no-op hooks) against baseURL over sockets, each
// with a keep-alive pool of its own, closed and shut down when b ends.
func socketClients(b *testing.B, baseURL string) []overheadClient {
	bareTr := benchTransport()
	b.Cleanup(bareTr.CloseIdleConnections)
	cfg := openai.DefaultConfig(benchKey)
	cfg.BaseURL = baseURL
	cfg.HTTPClient = &http.Client{Transport: bareTr}
	bare := openai.NewClientWithConfig(cfg)
	clients := []overheadClient{{"gopenai", bare.CreateChatCompletion}}
	for _, c := range []struct {
		name  string
		hooks *llmdrain.Hooks
	}{
		{"llmdrain", nil},
		// Every hook set, doing nothing: what observing costs before a
		// metrics library adds its own.
		{"llmdrain-hooks", noopHooks()},
	} {
		tr := benchTransport()
		b.Cleanup(tr.CloseIdleConnections)
		ld, err := llmdrain.New(llmdrain.Config{APIKey: benchKey, BaseURL: baseURL, HTTPClient: &http.Client{Transport: tr}, Hooks: c.hooks})
		if err != nil {
			b.Fatal(err)
		}
		// Its plain-http endpoint has a pool of its own, derived from tr:
		// Shutdown closes it.
		b.Cleanup(func() { ld.Shutdown(context.Background()) })
		clients = append(clients, overheadClient{c.name, ld.CreateChatCompletion})
	}
	return clients
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
