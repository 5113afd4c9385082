package llmdrain

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// capped returns n tasks whose answers ("You said: task NNN") are 4 words,
// which llmtest bills as 4 completion tokens, asked for with exactly that
// bound: their worst case is their cost when the input is free.
func capped(n int) []Task {
	tasks := make([]Task, n)
	for i := range tasks {
		req := userMsg(fmt.Sprintf("task %03d", i))
		req.Model, req.MaxCompletionTokens = DefaultModel, 4
		tasks[i] = Task{ID: fmt.Sprintf("t%03d", i), Request: &req}
	}
	return tasks
}

// outputOnly prices gpt-4o's output only, at $1 per million tokens: a
// capped task costs exactly $0.000004.
var outputOnly = Prices{DefaultModel: {Output: 1}}

const cappedTask = 4e-6 // USD

// Each task is priced from the usage its answer reports, by the model the
// answer names; the batch sums them exactly, and a model without a price is
// unknown, not free.
func TestBatchCost(t *testing.T) {
	srv := newServer(t)
	prices := loadTestPrices(t)
	c := newTestClient(t, srv, Config{Model: "gpt-4.1", Prices: prices})
	tasks := prompts(10)
	var last Progress
	res, err := c.Batch(context.Background(), tasks, BatchOptions{Concurrency: 4, OnProgress: func(p Progress) { last = p }})
	require.NoError(t, err)
	var want pico
	for i, r := range res.Results {
		require.Equal(t, StatusCompleted, r.Status)
		// llmtest bills a token a word: 3 words of prompt, 5 of answer.
		require.Equal(t, 3, r.Usage.PromptTokens, i)
		require.Equal(t, 5, r.Usage.CompletionTokens, i)
		cost := toPico(3*2e-6 + 5*8e-6)
		assert.Equal(t, Cost{USD: cost.usd()}, r.Cost, i)
		want += cost
	}
	assert.Equal(t, Cost{USD: want.usd()}, res.Cost)
	assert.Equal(t, res.Cost, last.Cost)
	assert.Contains(t, last.String(), ", $0.0005")

	// An answer that names a dated snapshot is priced as its model.
	req := userMsg("one two")
	req.Model = "claude-sonnet-4-5-20250929"
	unpriced := userMsg("three")
	unpriced.Model = "no-such-price"
	res, err = c.Batch(context.Background(), []Task{{Request: &req}, {Request: &unpriced}}, BatchOptions{})
	require.NoError(t, err)
	assert.Equal(t, Cost{USD: toPico(2*3e-6 + 4*15e-6).usd()}, res.Results[0].Cost)
	assert.Equal(t, Cost{Unknown: true}, res.Results[1].Cost)
	assert.Equal(t, Cost{USD: res.Results[0].Cost.USD, Unknown: true}, res.Cost)

	// Without prices, every answer's cost is unknown.
	c = newTestClient(t, srv, Config{})
	res, err = c.Batch(context.Background(), prompts(2), BatchOptions{})
	require.NoError(t, err)
	assert.Equal(t, Cost{Unknown: true}, res.Results[0].Cost)
	assert.Equal(t, Cost{Unknown: true}, res.Cost)
}

// 64 tasks at once against a cap that fits exactly 40 of them: exactly 40
// are sent, they spend exactly the cap, and the other 60 end not run with
// ErrBudgetExceeded. The cap must hold exactly: a reservation that raced
// would send a 41st.
func TestBatchMaxCostExactUnderConcurrency(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(5*time.Millisecond))
	c := newTestClient(t, srv, Config{Prices: outputOnly})
	res, err := c.Batch(context.Background(), capped(100), BatchOptions{Concurrency: 64, MaxCost: 40 * cappedTask})
	require.ErrorIs(t, err, ErrBudgetExceeded)
	assert.Equal(t, 40, res.Completed)
	assert.Equal(t, 60, res.NotRun)
	assert.Equal(t, 40, srv.Stats().Requests)
	assert.Equal(t, toPico(40*cappedTask), toPico(res.Cost.USD))
	assert.False(t, res.Cost.Unknown)
	for _, r := range res.Results {
		if r.Status == StatusNotRun {
			assert.ErrorIs(t, r.Err, ErrBudgetExceeded, r.ID)
		}
	}
}

// When reservations exceed what tasks really cost (the prompt's bound is
// its body's bytes), tasks wait for the running ones to settle rather than
// stop early: the batch spends up to the cap, never past it.
// The client's cap (Config.MaxCost) is waited for the same way by a
// batch's tasks.
func TestBatchMaxCostWaitsForRunningTasks(t *testing.T) {
	const maxCost = 100 * 6e-6 // 100 tasks' real cost
	prices := Prices{DefaultModel: {Input: 1, Output: 1}}
	for _, clientCap := range []bool{false, true} {
		srv := newServer(t, llmtest.WithLatency(2*time.Millisecond))
		cfg, opts := Config{Prices: prices}, BatchOptions{Concurrency: 64, MaxCost: maxCost}
		if clientCap {
			cfg.MaxCost, opts.MaxCost = maxCost, 0
		}
		c := newTestClient(t, srv, cfg)
		tasks := capped(200)
		worst, err := c.cost.worst(chatBound(tasks[0].Request, len(mustMarshal(t, tasks[0].Request))))
		require.NoError(t, err)
		each := toPico((2 + 4) * 1e-6) // "task NNN" and the 4-word answer
		require.Greater(t, worst, 10*each, "the reservation is a worst case, well above the cost")
		res, err := c.Batch(context.Background(), tasks, opts)
		require.ErrorIs(t, err, ErrBudgetExceeded)
		spent := toPico(res.Cost.USD)
		assert.LessOrEqual(t, spent, toPico(maxCost))
		assert.Greater(t, spent, toPico(maxCost)-worst, "stopped before the last reservation that fitted")
		assert.Equal(t, int(spent/each), res.Completed)
		assert.Equal(t, res.Completed, srv.Stats().Requests)
		if clientCap {
			assert.Equal(t, int64(spent), c.cost.budget.Spent())
		}
	}
}

// A batch stopped by its budget goes on exactly where it stopped when run
// again with a larger cap, counting what its earlier runs spent: with the
// same cap it does nothing more.
func TestBatchResumeAfterBudgetExceeded(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{Prices: outputOnly})
	path := filepath.Join(t.TempDir(), "journal.jsonl")
	tasks := capped(30)
	opts := BatchOptions{Concurrency: 1, Journal: path, MaxCost: 10 * cappedTask}

	res, err := c.Batch(context.Background(), tasks, opts)
	require.ErrorIs(t, err, ErrBudgetExceeded)
	assert.Contains(t, err.Error(), `task "t010" could cost up to $0.000004, and $0.000040 of the batch's $0.000040 is spent`)
	for i, r := range res.Results {
		want := StatusCompleted
		if i >= 10 {
			want = StatusNotRun
		}
		assert.Equal(t, want, r.Status, r.ID)
	}

	// The same cap: the journal's spend fills it; nothing is sent.
	res, err = c.Batch(context.Background(), tasks, opts)
	require.ErrorIs(t, err, ErrBudgetExceeded)
	assert.Equal(t, 10, res.Resumed)
	assert.Equal(t, 20, res.NotRun)
	assert.Equal(t, 10, srv.Stats().Requests)

	// A cap for 25 in all runs 15 more, in order, then stops again.
	opts.MaxCost = 25 * cappedTask
	res, err = c.Batch(context.Background(), tasks, opts)
	require.ErrorIs(t, err, ErrBudgetExceeded)
	assert.Equal(t, 25, srv.Stats().Requests)
	assert.Equal(t, toPico(15*cappedTask), toPico(res.Cost.USD))
	for i, r := range res.Results {
		switch {
		case i < 10:
			assert.True(t, r.Resumed, r.ID)
			assert.Equal(t, Cost{USD: cappedTask}, r.Cost, r.ID)
		case i < 25:
			assert.Equal(t, StatusCompleted, r.Status, r.ID)
			assert.False(t, r.Resumed, r.ID)
		default:
			assert.Equal(t, StatusNotRun, r.Status, r.ID)
		}
	}

	// Enough for all: the last 5, and nothing else.
	opts.MaxCost = 30 * cappedTask
	res, err = c.Batch(context.Background(), tasks, opts)
	require.NoError(t, err)
	assert.Equal(t, 30, res.Completed)
	assert.Equal(t, 25, res.Resumed)
	assert.Equal(t, 30, srv.Stats().Requests)

	// BatchSeq reads the same journal's spend.
	opts.MaxCost = 30 * cappedTask
	more := capped(31)
	sres, err := c.BatchSeq(context.Background(), taskSeq(more), opts, nil)
	require.ErrorIs(t, err, ErrBudgetExceeded)
	assert.Equal(t, 30, sres.Resumed)
	assert.Equal(t, 1, sres.NotRun)
	assert.Equal(t, 30, srv.Stats().Requests)
}

func taskSeq(tasks []Task) func(func(Task, error) bool) {
	return func(yield func(Task, error) bool) {
		for _, t := range tasks {
			if !yield(t, nil) {
				return
			}
		}
	}
}

// A cap cannot bound a task whose model has no price, nor one that sets no
// output bound for a model without MaxOutput: it is refused, nothing sent.
func TestBatchMaxCostUnbounded(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{Prices: Prices{DefaultModel: {Input: 1, Output: 1}, "bounded": {Output: 1, MaxOutput: 10}}})
	unpriced := userMsg("hello")
	unpriced.Model = "unpriced"
	res, err := c.Batch(context.Background(), []Task{{Request: &unpriced}, {Prompt: "after"}}, BatchOptions{MaxCost: 1, Concurrency: 1})
	require.ErrorIs(t, err, ErrBudgetExceeded)
	assert.ErrorContains(t, res.Results[0].Err, `no price for model "unpriced"`)
	assert.ErrorIs(t, res.Results[1].Err, ErrBudgetExceeded, "the batch stops at the first refusal")
	res, err = c.Batch(context.Background(), []Task{{Prompt: "no max_tokens"}}, BatchOptions{MaxCost: 1})
	require.ErrorIs(t, err, ErrBudgetExceeded)
	assert.ErrorContains(t, res.Results[0].Err, "no max_completion_tokens")
	assert.Zero(t, srv.Stats().Requests)

	// MaxOutput bounds a request without max_tokens; n multiplies it.
	req := userMsg("x")
	req.Model, req.N = "bounded", 3
	w, err := c.cost.worst(chatBound(&req, 100))
	require.NoError(t, err)
	assert.Equal(t, toPico(30e-6), w)

	for _, maxCost := range []float64{-1, 2e6} {
		_, err = c.Batch(context.Background(), prompts(1), BatchOptions{MaxCost: maxCost})
		assert.ErrorIs(t, err, ErrInvalidBatch)
	}
	_, err = newTestClient(t, srv, Config{}).Batch(context.Background(), prompts(1), BatchOptions{MaxCost: 1})
	assert.ErrorIs(t, err, ErrInvalidBatch)
	assert.Zero(t, srv.Stats().Requests)
}

// The worst case of a call that may fail over to a target with a model of
// its own is priced at the dearer of the two.
func TestWorstCostCoversFallbackModels(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{
		Prices:    Prices{"cheap": {Input: 1, Output: 1}, "dear": {Input: 1, Output: 100}},
		Fallbacks: []Target{{Model: "dear"}},
	})
	req := userMsg("x")
	req.Model, req.MaxCompletionTokens = "cheap", 10
	w, err := c.cost.worst(chatBound(&req, 50))
	require.NoError(t, err)
	assert.Equal(t, toPico(50e-6+1000e-6), w)
}

func TestConfigCostValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{MaxCost: 1}, "MaxCost"},
		{Config{MaxCost: -1, Prices: outputOnly}, "MaxCost"},
		{Config{Prices: Prices{"m": {Input: -1}}}, `Prices["m"].Input`},
		{Config{Prices: Prices{"m": {Output: inf()}}}, `Prices["m"].Output`},
		{Config{Prices: Prices{"m": {MaxOutput: -1}}}, `Prices["m"].MaxOutput`},
	} {
		tc.cfg.APIKey = fakeKey
		_, err := New(tc.cfg)
		var ce *ConfigError
		if assert.ErrorAs(t, err, &ce, tc.field) {
			assert.Equal(t, tc.field, ce.Field)
		}
	}
	cfg := Config{APIKey: fakeKey, Prices: outputOnly, MaxCost: 2.5}
	assert.Contains(t, cfg.String(), "Prices: 1 models, MaxCost: 2.5")
}

func inf() float64 { var z float64; return 1 / z }

func mustMarshal(t *testing.T, req *openai.ChatCompletionRequest) []byte {
	t.Helper()
	p, err := (&Client{model: DefaultModel}).prepareTask(0, Task{Request: req})
	require.NoError(t, err)
	return make([]byte, p.size)
}

// costRecorder collects the CallDone events of a client.
type costRecorder struct {
	mu    sync.Mutex
	calls []CallDoneInfo
}

func (r *costRecorder) hooks() *Hooks {
	return &Hooks{CallDone: func(i CallDoneInfo) {
		r.mu.Lock()
		r.calls = append(r.calls, i)
		r.mu.Unlock()
	}}
}

func (r *costRecorder) all() []CallDoneInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]CallDoneInfo(nil), r.calls...)
}

// The client-wide cap under 64 concurrent callers, each calling until it
// is refused: exactly the 40 calls the cap pays for reach the server, they
// spend exactly the cap, and every refusal is ErrBudgetExceeded with
// nothing sent.
func TestClientMaxCostExactUnderConcurrency(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(5*time.Millisecond))
	rec := &costRecorder{}
	c := newTestClient(t, srv, Config{Prices: outputOnly, MaxCost: 40 * cappedTask, Hooks: rec.hooks()})
	req := capped(1)[0].Request
	var (
		wg sync.WaitGroup
		mu sync.Mutex
		ok int
	)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, err := c.CreateChatCompletion(context.Background(), *req)
				if err != nil {
					assert.ErrorIs(t, err, ErrBudgetExceeded)
					return
				}
				mu.Lock()
				ok++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, 40, ok)
	assert.Equal(t, 40, srv.Stats().Requests)
	assert.Equal(t, int64(toPico(40*cappedTask)), c.cost.budget.Spent())
	var paid pico
	refused := 0
	for _, call := range rec.all() {
		if call.Err == nil {
			paid += toPico(call.Cost.USD)
			assert.Equal(t, Cost{USD: cappedTask}, call.Cost)
		} else {
			refused++
			assert.Equal(t, "budget_exceeded", call.ErrorType)
			assert.Zero(t, call.Attempts)
			assert.Equal(t, Cost{}, call.Cost)
		}
	}
	assert.Equal(t, toPico(40*cappedTask), paid)
	assert.Equal(t, 64, refused)
}

// A stream is charged from its usage event, which llmdrain asks for: the
// budget keeps the cost, not the reservation. One cut before its usage
// event keeps its reservation: it was paid for, by how much nobody said.
func TestStreamChargedFromUsageEvent(t *testing.T) {
	srv := newServer(t)
	// Output only, so that a reservation is MaxOutput's 100 tokens exactly.
	prices := Prices{DefaultModel: {Output: 1, MaxOutput: 100}}
	for _, hooked := range []bool{false, true} {
		rec := &costRecorder{}
		cfg := Config{Prices: prices, MaxCost: 1}
		if hooked {
			cfg.Hooks = rec.hooks()
		}
		c := newTestClient(t, srv, cfg)
		s, err := c.CreateChatCompletionStream(context.Background(), userMsg("count these four words"))
		require.NoError(t, err)
		text, err := readStream(s)
		require.NoError(t, err)
		s.Close()
		assert.Equal(t, llmtest.Reply("count these four words"), text)
		// 6 words out (llmtest's token is a word).
		want := toPico(6e-6)
		assert.Equal(t, int64(want), c.cost.budget.Spent(), "hooked %v", hooked)

		got, err := c.Chat(context.Background(), "two words")
		require.NoError(t, err)
		assert.Equal(t, llmtest.Reply("two words"), got)
		want += toPico(4e-6)
		assert.Equal(t, int64(want), c.cost.budget.Spent(), "hooked %v", hooked)

		// Cut after its first chunks: no usage event, the reservation stays.
		srv.Script(llmtest.Truncate(2))
		req := userMsg("cut short")
		s, err = c.CreateChatCompletionStream(context.Background(), req)
		require.NoError(t, err)
		_, err = readStream(s)
		require.ErrorIs(t, err, io.ErrUnexpectedEOF)
		s.Close()
		assert.Equal(t, int64(want+toPico(100e-6)), c.cost.budget.Spent(), "hooked %v", hooked)
		if hooked {
			calls := rec.all()
			require.Len(t, calls, 3)
			assert.Equal(t, Cost{USD: toPico(6e-6).usd()}, calls[0].Cost)
			assert.Equal(t, Usage{InputTokens: 4, OutputTokens: 6, Known: true}, calls[0].Usage)
			assert.Equal(t, Cost{USD: toPico(4e-6).usd()}, calls[1].Cost)
			assert.Equal(t, Cost{Unknown: true}, calls[2].Cost)
		}
	}
}

// With Hooks and Prices (no cap), each call's cost is in CallDone: priced
// by the answer's model, unknown for a model without a price, nothing for
// an error status.
func TestCallDoneCost(t *testing.T) {
	srv := newServer(t)
	rec := &costRecorder{}
	c := newTestClient(t, srv, Config{Prices: loadTestPrices(t), Hooks: rec.hooks()})
	req := userMsg("one two three")
	req.Model = "gpt-4.1-2025-04-14"
	_, err := c.CreateChatCompletion(context.Background(), req)
	require.NoError(t, err)
	req.Model = "unpriced"
	_, err = c.CreateChatCompletion(context.Background(), req)
	require.NoError(t, err)
	srv.Script(llmtest.Status(400))
	_, err = c.CreateChatCompletion(context.Background(), req)
	require.Error(t, err)
	_, err = c.OpenAI().CreateEmbeddings(context.Background(), openai.EmbeddingRequest{Model: openai.SmallEmbedding3, Input: []string{"a b c d"}})
	require.NoError(t, err)
	_, err = c.OpenAI().ListModels(context.Background())
	require.NoError(t, err)
	calls := rec.all()
	require.Len(t, calls, 5)
	assert.Equal(t, Cost{USD: toPico(3*2e-6 + 5*8e-6).usd()}, calls[0].Cost)
	assert.Equal(t, Cost{Unknown: true}, calls[1].Cost)
	assert.Equal(t, Cost{}, calls[2].Cost)
	assert.Equal(t, Cost{USD: toPico(4 * 0.02e-6).usd()}, calls[3].Cost)
	assert.Equal(t, Cost{}, calls[4].Cost, "a GET pays for nothing")
}

// A batch task refused by the client-wide cap ends not run and stops the
// batch, as the batch's own cap does.
func TestBatchStoppedByClientMaxCost(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{Prices: outputOnly, MaxCost: 5 * cappedTask})
	res, err := c.Batch(context.Background(), capped(10), BatchOptions{Concurrency: 1})
	require.ErrorIs(t, err, ErrBudgetExceeded)
	assert.Equal(t, 5, res.Completed)
	assert.Equal(t, 5, res.NotRun)
	assert.Equal(t, 0, res.Failed)
	assert.Equal(t, 5, srv.Stats().Requests)
}
