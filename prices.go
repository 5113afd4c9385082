package llmdrain

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Price is what a model's tokens cost, in US dollars per million tokens.
// llmdrain ships no prices: set them in code or load them with LoadPrices
// from a table you maintain.
type Price struct {
	// Input is the price of prompt tokens not read from the provider's
	// prompt cache.
	Input float64
	// CachedInput is the price of prompt tokens read from the cache
	// (usage.prompt_tokens_details.cached_tokens). 0 means Input: a table
	// that gives no cache price is taken to give no discount, so a cost
	// is never under-counted.
	CachedInput float64
	// Output is the price of completion tokens, reasoning tokens
	// included.
	Output float64
	// MaxOutput is the most tokens the model writes in one answer. A
	// budget (Config.MaxCost, BatchOptions.MaxCost) reserves it for a
	// request that sets no max_tokens or max_completion_tokens. 0 means
	// unknown: such a request cannot be bounded, and a budget refuses it.
	MaxOutput int
}

// Prices is a price table by model name, as the API spells it ("gpt-4.1",
// "claude-sonnet-4-5"). A model is looked up by the name the answer gives
// (its "model" field), then by the name the request gave; for each, the
// exact name first, then the name without a date suffix ("-2025-04-14",
// "-20250929"): providers answer "gpt-4.1-2025-04-14" to a request for
// "gpt-4.1". A model found under neither has an unknown cost, never a
// cost of zero.
type Prices map[string]Price

// Lookup returns the price of model: under its exact name, else under the
// name without a trailing date ("-2025-04-14" or "-20250929").
func (p Prices) Lookup(model string) (Price, bool) {
	if pr, ok := p[model]; ok {
		return pr, true
	}
	if base, ok := cutDate(model); ok {
		pr, ok := p[base]
		return pr, ok
	}
	return Price{}, false
}

// cutDate returns model without its date suffix, and whether it had one:
// "-YYYY-MM-DD" or "-YYYYMMDD", as OpenAI and Anthropic name snapshots.
func cutDate(model string) (string, bool) {
	digits := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if s[i] < '0' || s[i] > '9' {
				return false
			}
		}
		return true
	}
	n := len(model)
	if n > 11 && model[n-11] == '-' && model[n-6] == '-' && model[n-3] == '-' &&
		digits(model[n-10:n-6]+model[n-5:n-3]+model[n-2:]) && strings.HasPrefix(model[n-10:], "20") {
		return model[:n-11], true
	}
	if n > 9 && model[n-9] == '-' && digits(model[n-8:]) && strings.HasPrefix(model[n-8:], "20") {
		return model[:n-9], true
	}
	return model, false
}

// MaxPrice is the highest price accepted, in US dollars per million
// tokens: a hundred times the dearest model's output in 2025, and low
// enough that costs summed in picodollars cannot overflow.
const MaxPrice = 1e5

// Cost is what a call, a task or a batch cost.
type Cost struct {
	// USD is the cost in US dollars: of a batch, the sum of the costs
	// that are known.
	USD float64
	// Unknown reports that an answer was paid for at a price llmdrain
	// does not know (its model is not in Config.Prices, or no Prices are
	// set), or whose usage it did not report. USD then leaves it out: it
	// is not zero, only not counted.
	Unknown bool
}

// String renders the cost as "$0.012345", with " + unknown" when part of
// it is not known.
func (c Cost) String() string {
	s := "$" + strconv.FormatFloat(c.USD, 'f', 6, 64)
	if c.Unknown {
		s += " + unknown"
	}
	return s
}

// ErrBudgetExceeded is the error of a call or a batch task that did not
// start because its worst-case cost could exceed what is left of a budget
// (Config.MaxCost, BatchOptions.MaxCost), or could not be bounded at all
// (a model without a price, a request without an output bound). Nothing
// was sent.
var ErrBudgetExceeded = errors.New("llmdrain: budget exceeded")

// LoadPrices reads a price table in the format of LiteLLM's
// model_prices_and_context_window.json: one JSON object whose keys are
// model names and whose values give input_cost_per_token,
// cache_read_input_token_cost, output_cost_per_token (US dollars per
// token) and max_output_tokens. Other fields, and the "sample_spec" entry
// that documents the format, are ignored. So are the entries not priced by
// the token (images, audio by the second): those with no
// input_cost_per_token, or no output_cost_per_token unless their mode is
// "embedding". A model listed with a provider prefix ("deepseek/deepseek-chat",
// with litellm_provider "deepseek") is also listed without it, unless the
// table has that name already.
//
// It fails, naming the entry and the field, on input that is not such an
// object, on a price that is not a number or is negative, and on a
// max_output_tokens that is not a whole number.
func LoadPrices(r io.Reader) (Prices, error) {
	dec := json.NewDecoder(r)
	dec.UseNumber()
	var raw map[string]json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("llmdrain: prices: not a JSON object of models: %w", err)
	}
	if raw == nil {
		return nil, errors.New("llmdrain: prices: not a JSON object of models")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("llmdrain: prices: more than one JSON value")
	}
	names := slices.Sorted(maps.Keys(raw)) // errors name the same entry on every run
	p := make(Prices, len(raw))
	aliases := map[string]Price{}
	for _, name := range names {
		if name == "sample_spec" {
			continue
		}
		var e map[string]any
		d := json.NewDecoder(strings.NewReader(string(raw[name])))
		d.UseNumber()
		if err := d.Decode(&e); err != nil || e == nil {
			return nil, fmt.Errorf("llmdrain: prices: %q: not a JSON object", name)
		}
		in, hasIn, err := perMillion(e, "input_cost_per_token")
		if err != nil {
			return nil, fmt.Errorf("llmdrain: prices: %q: %w", name, err)
		}
		out, hasOut, err := perMillion(e, "output_cost_per_token")
		if err != nil {
			return nil, fmt.Errorf("llmdrain: prices: %q: %w", name, err)
		}
		cached, _, err := perMillion(e, "cache_read_input_token_cost")
		if err != nil {
			return nil, fmt.Errorf("llmdrain: prices: %q: %w", name, err)
		}
		maxOut, err := wholeNumber(e, "max_output_tokens")
		if err != nil {
			return nil, fmt.Errorf("llmdrain: prices: %q: %w", name, err)
		}
		mode, _ := e["mode"].(string)
		if !hasIn || !hasOut && mode != "embedding" {
			continue // not priced by the token
		}
		pr := Price{Input: in, CachedInput: cached, Output: out, MaxOutput: maxOut}
		p[name] = pr
		if prefix, model, ok := strings.Cut(name, "/"); ok && model != "" && !strings.Contains(model, "/") {
			if provider, _ := e["litellm_provider"].(string); provider == prefix {
				aliases[model] = pr
			}
		}
	}
	for model, pr := range aliases {
		if _, ok := p[model]; !ok {
			p[model] = pr
		}
	}
	return p, nil
}

// perMillion reads field, a price per token, as a price per million
// tokens, and whether it was there. A JSON null counts as absent.
func perMillion(e map[string]any, field string) (float64, bool, error) {
	v, ok := e[field]
	if !ok || v == nil {
		return 0, false, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false, fmt.Errorf("%s: not a number", field)
	}
	f, err := n.Float64()
	if err != nil || !(f >= 0) || f*1e6 > MaxPrice {
		return 0, false, fmt.Errorf("%s: %s is not a price (at most %g US dollars per token)", field, n, MaxPrice/1e6)
	}
	// Rounded to a millionth of a dollar per million tokens (a picodollar
	// a token, the unit costs are summed in), so that 2e-06 reads as 2
	// and not 1.9999999999999998.
	return math.Round(f*1e12) / 1e6, true, nil
}

// wholeNumber reads field as a count; 0 when absent.
func wholeNumber(e map[string]any, field string) (int, error) {
	v, ok := e[field]
	if !ok || v == nil {
		return 0, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, fmt.Errorf("%s: not a number", field)
	}
	i, err := strconv.ParseInt(string(n), 10, 32)
	if err != nil || i < 0 {
		return 0, fmt.Errorf("%s: %s is not a token count", field, n)
	}
	return int(i), nil
}

// pico is an amount of US dollars in picodollars (1e-12 USD): costs are
// summed and budgets kept in whole picodollars, so that a cap holds
// exactly, with no rounding drift over millions of calls. An int64 holds
// 9.2 million dollars of them.
type pico int64

// picoPerUSD is the number of picodollars in a dollar.
const picoPerUSD = 1e12

func toPico(usd float64) pico { return pico(math.Round(usd * picoPerUSD)) }

func (p pico) usd() float64 { return float64(p) / picoPerUSD }

// tokenPrices is a Price in picodollars per token.
type tokenPrices struct {
	in, cached, out pico
	maxOut          int
}

func (p Price) perToken() tokenPrices {
	tp := tokenPrices{in: toPico(p.Input / 1e6), cached: toPico(p.CachedInput / 1e6), out: toPico(p.Output / 1e6), maxOut: p.MaxOutput}
	if p.CachedInput == 0 {
		tp.cached = tp.in
	}
	return tp
}

// cost is what u costs at tp. Cached tokens beyond the input (a
// provider's inconsistency) are charged as input.
func (tp tokenPrices) cost(u Usage) pico {
	in := max(u.InputTokens, 0)
	cached := min(max(u.CachedInputTokens, 0), in)
	return min(priceTokens(in-cached, 1, tp.in)+priceTokens(cached, 1, tp.cached)+priceTokens(max(u.OutputTokens, 0), 1, tp.out), maxPico)
}

// maxPico bounds every amount: more than any budget (a million dollars is
// 1e18 picodollars), and three of them still fit in an int64.
const maxPico pico = 2e18

// priceTokens is n × m tokens at p picodollars each (none negative),
// saturating at maxPico: a count no answer can have (a hostile server's
// usage, a request's absurd n × max_tokens) must not wrap around.
func priceTokens(n, m int, p pico) pico {
	if f := float64(n) * float64(m) * float64(p); f >= float64(maxPico) {
		return maxPico
	}
	return pico(n) * pico(m) * p
}

// priceOf returns the price of an answer from respModel to a request for
// reqModel: the answer's model first, as Prices documents.
func (p Prices) priceOf(respModel, reqModel string) (tokenPrices, bool) {
	if respModel != "" {
		if pr, ok := p.Lookup(respModel); ok {
			return pr.perToken(), true
		}
	}
	if reqModel != "" && reqModel != respModel {
		if pr, ok := p.Lookup(reqModel); ok {
			return pr.perToken(), true
		}
	}
	return tokenPrices{}, false
}
