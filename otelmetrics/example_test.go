package otelmetrics_test

import (
	"context"
	"fmt"
	"log"

	"go.opentelemetry.io/otel"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
	"github.com/llmdrain/llmdrain/otelmetrics"
)

// A client whose calls are recorded as OpenTelemetry metrics. In a
// service the reader is an exporter's: Prometheus (see examples/server),
// OTLP.
func ExampleNew() {
	llm := llmtest.NewServer() // a fake OpenAI-compatible API
	defer llm.Close()

	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(context.Background())

	hooks, err := otelmetrics.New(provider, otelmetrics.WithProviderName("openai"))
	if err != nil {
		panic(err)
	}
	client, err := llmdrain.New(llmdrain.Config{APIKey: "sk-example", BaseURL: llm.URL, Hooks: hooks})
	if err != nil {
		panic(err)
	}
	defer client.Shutdown(context.Background())
	if _, err := client.Chat(context.Background(), "Say hello"); err != nil {
		panic(err)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		panic(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if h, ok := m.Data.(metricdata.Histogram[int64]); ok && m.Name == "gen_ai.client.token.usage" {
			for _, dp := range h.DataPoints {
				tokenType, _ := dp.Attributes.Value("gen_ai.token.type")
				fmt.Println(m.Name, tokenType.AsString(), dp.Sum > 0)
			}
		}
	}
	// Unordered output:
	// gen_ai.client.token.usage input true
	// gen_ai.client.token.usage output true
}

// The set-up the README shows: the hooks record into the meter provider
// the service has registered with OpenTelemetry (its exporter decides
// where the metrics go: Prometheus, OTLP). TestREADMEShowsExample keeps
// the README's lines the same as these.
func Example_globalMeterProvider() {
	hooks, err := otelmetrics.New(otel.GetMeterProvider(), otelmetrics.WithProviderName("openai"))
	if err != nil {
		log.Fatal(err)
	}
	c, err := llmdrain.New(llmdrain.Config{Hooks: hooks}) // and the rest of your Config
	if err != nil {
		log.Fatal(err)
	}
	defer c.Shutdown(context.Background())
}
