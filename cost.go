package llmdrain

import (
	"encoding/json"
	"fmt"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain/internal/budget"
)

// costing is a client's cost accounting: its prices and its budget.
type costing struct {
	prices Prices         // Config.Prices; nil: every cost unknown
	budget *budget.Budget // Config.MaxCost; nil: no cap
	// models are the models the fallback targets put in the requests they
	// are sent (Target.Model): a call may be answered by any of them, so
	// its worst case is priced at the dearest.
	models []string
}

func newCosting(r resolved) *costing {
	c := &costing{prices: r.Prices}
	if r.MaxCost > 0 {
		c.budget = budget.New(int64(toPico(r.MaxCost)), false)
	}
	for _, t := range r.targets {
		if t.Model != "" {
			c.models = append(c.models, t.Model)
		}
	}
	return c
}

// of returns the cost of an answer from respModel to a request for
// reqModel that reports usage u, in picodollars too. A usage that is not
// known, or a model without a price, makes the cost unknown.
func (c *costing) of(respModel, reqModel string, u Usage) (Cost, pico) {
	if !u.Known {
		return Cost{Unknown: true}, 0
	}
	tp, ok := c.prices.priceOf(respModel, reqModel)
	if !ok {
		return Cost{Unknown: true}, 0
	}
	p := tp.cost(u)
	return Cost{USD: p.usd()}, p
}

// usageOf is what an openai.Usage counts; an answer without usage decodes
// to zeros, taken for no usage.
func usageOf(u openai.Usage) Usage {
	t := Usage{InputTokens: u.PromptTokens, OutputTokens: u.CompletionTokens,
		Known: u.PromptTokens != 0 || u.CompletionTokens != 0 || u.TotalTokens != 0}
	if d := u.PromptTokensDetails; d != nil {
		t.CachedInputTokens = d.CachedTokens
	}
	return t
}

// bound is what a request may use at most, for a budget's reservation.
type bound struct {
	model string // as requested
	// promptBytes is the size of the request's JSON body. It bounds the
	// prompt's tokens: with the byte-level tokenizers of the models priced
	// here (OpenAI's, Anthropic's, DeepSeek's) a token is at least one
	// byte of text, and the body holds every message's text, escaped,
	// with more bytes of JSON around each message than the few tokens a
	// chat template adds. Images and audio in a prompt are priced by
	// other rules, and are not bounded by it.
	promptBytes int
	// output is the request's max_completion_tokens (else max_tokens) × n;
	// 0: none set, the model's Price.MaxOutput is taken. embeddings
	// writes none.
	output     int
	n          int
	embeddings bool
}

// chatBound is the bound of a chat request whose JSON body has size bytes.
func chatBound(req *openai.ChatCompletionRequest, size int) bound {
	//lint:ignore SA1019 clients still send max_tokens, and the API honours it
	out := req.MaxTokens
	if req.MaxCompletionTokens > 0 {
		out = req.MaxCompletionTokens
	}
	return bound{model: req.Model, promptBytes: size, output: out, n: max(req.N, 1)}
}

// worst returns the most a request within b may cost: its prompt bound at
// the input price plus its output bound at the output price, at the
// dearest of its model and the fallback targets' models. It fails,
// matching ErrBudgetExceeded, when a model has no price or the output has
// no bound: such a call's cost cannot be capped.
func (c *costing) worst(b bound) (pico, error) {
	var most pico
	for i := -1; i < len(c.models); i++ {
		model := b.model
		if i >= 0 {
			model = c.models[i]
		}
		pr, ok := c.prices.Lookup(model)
		if !ok {
			return 0, fmt.Errorf("%w: no price for model %q, its cost cannot be bounded", ErrBudgetExceeded, model)
		}
		tp := pr.perToken()
		out := 0
		if !b.embeddings {
			out = b.output
			if out <= 0 {
				out = tp.maxOut
			}
			if out <= 0 {
				return 0, fmt.Errorf("%w: a request to %q sets no max_completion_tokens and its price gives no MaxOutput, its cost cannot be bounded", ErrBudgetExceeded, model)
			}
		}
		w := min(priceTokens(b.promptBytes, 1, tp.in)+priceTokens(out, b.n, tp.out), maxPico)
		most = max(most, w)
	}
	return most, nil
}

// requestBound reads the bound of a request for operation op (OpChat,
// OpTextCompletion, OpEmbeddings) from its JSON body; false if the body
// is no JSON object.
func requestBound(op string, body []byte) (bound, bool) {
	var req struct {
		Model               string `json:"model"`
		MaxTokens           *int   `json:"max_tokens"`
		MaxCompletionTokens *int   `json:"max_completion_tokens"`
		N                   *int   `json:"n"`
		BestOf              *int   `json:"best_of"` // text completions: generated server-side, and billed
	}
	if body == nil || json.Unmarshal(body, &req) != nil {
		return bound{}, false
	}
	b := bound{model: req.Model, promptBytes: len(body), n: 1, embeddings: op == OpEmbeddings}
	if req.MaxTokens != nil {
		b.output = *req.MaxTokens
	}
	if req.MaxCompletionTokens != nil && *req.MaxCompletionTokens > 0 {
		b.output = *req.MaxCompletionTokens
	}
	if req.N != nil {
		b.n = max(b.n, *req.N)
	}
	if req.BestOf != nil {
		b.n = max(b.n, *req.BestOf)
	}
	return b, true
}
