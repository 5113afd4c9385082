package llmdrain

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func loadTestPrices(t testing.TB) Prices {
	t.Helper()
	f, err := os.Open("testdata/model_prices_and_context_window.json")
	require.NoError(t, err)
	defer f.Close()
	p, err := LoadPrices(f)
	require.NoError(t, err)
	return p
}

// The LiteLLM file is read per token and given per million tokens; the
// entries not priced by the token and the format's own sample_spec are
// left out.
func TestLoadPricesLiteLLM(t *testing.T) {
	p := loadTestPrices(t)
	assert.Equal(t, Price{Input: 2, CachedInput: 0.5, Output: 8, MaxOutput: 32768}, p["gpt-4.1"])
	assert.Equal(t, Price{Input: 3, CachedInput: 0.3, Output: 15, MaxOutput: 64000}, p["claude-sonnet-4-5"])
	assert.Equal(t, Price{Input: 0.28, CachedInput: 0.028, Output: 0.42, MaxOutput: 8192}, p["deepseek/deepseek-chat"])
	// The provider's own prefix is dropped for a name the table lacks;
	// another provider's (openrouter) is not.
	assert.Equal(t, p["deepseek/deepseek-chat"], p["deepseek-chat"])
	assert.Equal(t, Price{Input: 0.28, CachedInput: 0.028, Output: 0.42, MaxOutput: 65536}, p["deepseek-reasoner"])
	assert.Equal(t, Price{Input: 0.14, Output: 0.28, MaxOutput: 8192}, p["openrouter/deepseek/deepseek-chat"])
	assert.Equal(t, Price{Input: 0.02}, p["text-embedding-3-small"])
	for _, name := range []string{"sample_spec", "dall-e-3", "whisper-1", "gpt-4.1-2025-04-14-x"} {
		_, ok := p[name]
		assert.False(t, ok, name)
	}
	assert.Len(t, p, 13)
}

func TestPricesLookup(t *testing.T) {
	p := Prices{"gpt-4.1": {Input: 2}, "claude-sonnet-4-5": {Input: 3}, "gpt-4.1-2025-04-14": {Input: 1}}
	for model, want := range map[string]float64{
		"gpt-4.1":                    2,
		"gpt-4.1-2025-04-14":         1, // exact first
		"gpt-4.1-2026-01-30":         2,
		"claude-sonnet-4-5-20250929": 3,
	} {
		pr, ok := p.Lookup(model)
		assert.True(t, ok, model)
		assert.Equal(t, want, pr.Input, model)
	}
	for _, model := range []string{"gpt-4", "gpt-4.1-mini", "gpt-4.1-20250", "gpt-4.1-2025-4-14", "gpt-4.1-19990101x", "", "-20250101"} {
		_, ok := p.Lookup(model)
		assert.False(t, ok, model)
	}
}

// An answer is priced by the model it names, else the one asked for; a
// model in neither is unknown, never free.
func TestPriceOf(t *testing.T) {
	p := Prices{"gpt-4.1": {Input: 2, CachedInput: 0.5, Output: 8}, "cheap": {Input: 1, Output: 1}}
	tp, ok := p.priceOf("gpt-4.1-2025-04-14", "cheap")
	require.True(t, ok)
	// 1000 input of which 400 cached, 100 output.
	assert.Equal(t, toPico(600*2e-6+400*0.5e-6+100*8e-6), tp.cost(Usage{InputTokens: 1000, CachedInputTokens: 400, OutputTokens: 100}))
	tp, ok = p.priceOf("unpriced-answer", "cheap")
	require.True(t, ok)
	assert.Equal(t, toPico(2e-6), tp.cost(Usage{InputTokens: 1, OutputTokens: 1}))
	_, ok = p.priceOf("unpriced", "unpriced-too")
	assert.False(t, ok)
	_, ok = Prices(nil).priceOf("gpt-4.1", "gpt-4.1")
	assert.False(t, ok)
	// No cache price: cached tokens cost the input price.
	tp = Price{Input: 2, Output: 8}.perToken()
	assert.Equal(t, tp.cost(Usage{InputTokens: 10}), tp.cost(Usage{InputTokens: 10, CachedInputTokens: 10}))
}

func TestLoadPricesErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{``, "not a JSON object"},
		{`[]`, "not a JSON object"},
		{`null`, "not a JSON object"},
		{`{"a": {}} {}`, "more than one"},
		{`{"gpt-x": 3}`, `"gpt-x": not a JSON object`},
		{`{"gpt-x": {"input_cost_per_token": "2e-06", "output_cost_per_token": 1}}`, `"gpt-x": input_cost_per_token: not a number`},
		{`{"gpt-x": {"input_cost_per_token": -1, "output_cost_per_token": 1}}`, `"gpt-x": input_cost_per_token: -1 is not a price`},
		{`{"gpt-x": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e999}}`, `"gpt-x": output_cost_per_token: 1e999 is not a price`},
		{`{"gpt-x": {"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-6, "max_output_tokens": 1.5}}`, `"gpt-x": max_output_tokens: 1.5 is not a token count`},
		{`{"gpt-x": {"input_cost_per_token": 1e-6, "cache_read_input_token_cost": true}}`, `"gpt-x": cache_read_input_token_cost: not a number`},
		{`{"gpt-x": {"input_cost_per_token": 0.2, "output_cost_per_token": 1e-6}}`, `"gpt-x": input_cost_per_token: 0.2 is not a price (at most 0.1 US dollars per token)`},
	} {
		_, err := LoadPrices(strings.NewReader(tc.in))
		if assert.Error(t, err, tc.in) {
			assert.Contains(t, err.Error(), tc.want, tc.in)
			assert.True(t, strings.HasPrefix(err.Error(), "llmdrain: prices: "), err.Error())
		}
	}
	// Nulls are absent fields; an empty table is a table.
	p, err := LoadPrices(strings.NewReader(`{"m": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "max_output_tokens": null, "cache_read_input_token_cost": null}, "sample_spec": {"max_output_tokens": "text"}}`))
	require.NoError(t, err)
	assert.Equal(t, Prices{"m": {Input: 1, Output: 2}}, p)
	p, err = LoadPrices(strings.NewReader(`{}`))
	require.NoError(t, err)
	assert.Empty(t, p)
}

func TestCostString(t *testing.T) {
	assert.Equal(t, "$0.012345", Cost{USD: 0.012345}.String())
	assert.Equal(t, "$0.000000 + unknown", Cost{Unknown: true}.String())
	assert.False(t, errors.Is(ErrBudgetExceeded, ErrDraining))
}

// Whatever it reads, LoadPrices returns an error or a table New accepts:
// finite prices, none negative.
func FuzzLoadPrices(f *testing.F) {
	raw, err := os.ReadFile("testdata/model_prices_and_context_window.json")
	require.NoError(f, err)
	f.Add(raw)
	f.Add([]byte(`{"m": {"input_cost_per_token": 1e-300, "output_cost_per_token": 1.7e308, "max_output_tokens": 2147483647}}`))
	f.Add([]byte(`{"a/b": {"input_cost_per_token": 0, "output_cost_per_token": 0, "litellm_provider": "a"}, "b": null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := LoadPrices(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		_, err = New(Config{APIKey: fakeKey, Prices: p})
		if err != nil {
			t.Fatalf("LoadPrices gave a table New refuses: %v", err)
		}
	})
}

// Absurd counts (a hostile server's usage, a request's n × max_tokens)
// saturate rather than wrap around into a negative cost.
func TestCostSaturates(t *testing.T) {
	tp := Price{Input: MaxPrice, Output: MaxPrice}.perToken()
	huge := int(^uint(0) >> 1)
	assert.Equal(t, maxPico, tp.cost(Usage{InputTokens: huge, OutputTokens: huge, Known: true}))
	c := &costing{prices: Prices{"m": {Input: MaxPrice, Output: MaxPrice}}}
	w, err := c.worst(bound{model: "m", promptBytes: huge, output: huge, n: 128})
	require.NoError(t, err)
	assert.Equal(t, maxPico, w)
}
