package llmdrain_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/batchfile"
	"github.com/llmdrain/llmdrain/llmtest"
)

// The one-call path: a chat completion, tracked and retried.
func ExampleClient_Chat() {
	srv := llmtest.NewServer() // stands in for https://api.holysheep.ai/v1
	defer srv.Close()

	c, err := llmdrain.New(llmdrain.Config{APIKey: "sk-example", BaseURL: srv.URL})
	if err != nil {
		fmt.Println(err)
		return
	}
	text, err := c.Chat(context.Background(), "Hello, world!")
	fmt.Println(text, err)
	// Output: You said: Hello, world! <nil>
}

// A rate-limited call is retried after the delay the server asks for.
func ExampleClient_Chat_retry() {
	srv := llmtest.NewServer()
	defer srv.Close()
	srv.Script(llmtest.RateLimitedMS(50*time.Millisecond), llmtest.Status(503))

	c, _ := llmdrain.New(llmdrain.Config{APIKey: "sk-example", BaseURL: srv.URL})
	text, err := c.Chat(context.Background(), "try again")
	fmt.Println(text, err, srv.Stats().Requests, "requests")
	// Output: You said: try again <nil> 3 requests
}

// Shutdown refuses new calls at once and returns as soon as the calls in
// flight have finished.
func ExampleClient_Shutdown() {
	srv := llmtest.NewServer(llmtest.WithLatency(100 * time.Millisecond))
	defer srv.Close()
	c, _ := llmdrain.New(llmdrain.Config{APIKey: "sk-example", BaseURL: srv.URL})

	answer := make(chan string)
	go func() {
		text, _ := c.Chat(context.Background(), "finish me")
		answer <- text
	}()
	for srv.Stats().InFlight == 0 { // wait until the call reached the server
		time.Sleep(time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	drained := make(chan error)
	go func() { drained <- c.Shutdown(ctx) }()

	fmt.Println(<-answer)
	fmt.Println("drain:", <-drained)
	_, err := c.Chat(context.Background(), "too late")
	fmt.Println(errors.Is(err, llmdrain.ErrDraining))
	// Output:
	// You said: finish me
	// drain: <nil>
	// true
}

// A Tracker guards any kind of outbound work, not only LLM calls.
func ExampleTracker() {
	var t llmdrain.Tracker // the zero value is ready

	ctx, done, err := t.Begin(context.Background())
	if err != nil {
		return // llmdrain.ErrDraining: shutting down, do not start
	}
	go func() {
		defer done()
		<-ctx.Done() // a call that never finishes on its own
	}()

	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	err = t.Drain(dctx)
	var fe *llmdrain.ForcedDrainError
	fmt.Println(errors.As(err, &fe), len(fe.Stragglers))
	fmt.Println(errors.Is(context.Cause(ctx), llmdrain.ErrForcedShutdown))
	// Output:
	// true 1
	// true
}

// A service's shutdown: readiness off at the first SIGTERM, a delay for
// the load balancer, then the HTTP server and the LLM client drained within
// one timeout. Trigger stands in for the signal here.
func ExampleShutdown() {
	srv := llmtest.NewServer()
	defer srv.Close()
	c, _ := llmdrain.New(llmdrain.Config{APIKey: "sk-example", BaseURL: srv.URL})

	sd := &llmdrain.Shutdown{Delay: 10 * time.Millisecond, Timeout: 5 * time.Second}
	mux := http.NewServeMux()
	mux.Handle("/readyz", sd.ReadyHandler())
	mux.Handle("/healthz", sd.LiveHandler())
	httpSrv := &http.Server{Handler: mux}
	sd.RegisterServer("http", httpSrv) // inbound first
	sd.Register("llm", c.Shutdown)     // then the outbound calls

	sd.Trigger() // in a service: nothing, Run waits for SIGTERM or SIGINT
	fmt.Println(sd.Run(context.Background()))
	// Output: <nil>
}

// A batch at bounded concurrency, with a result per task in input order.
func ExampleClient_Batch() {
	srv := llmtest.NewServer()
	defer srv.Close()
	c, _ := llmdrain.New(llmdrain.Config{APIKey: "sk-example", BaseURL: srv.URL})

	tasks := []llmdrain.Task{{Prompt: "one"}, {Prompt: "two"}, {ID: "third", Prompt: "three"}}
	res, err := c.Batch(context.Background(), tasks, llmdrain.BatchOptions{Concurrency: 2})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, r := range res.Results {
		fmt.Println(r.Status, r.Text)
	}
	fmt.Println(res.Completed, "completed")
	// Output:
	// completed You said: one
	// completed You said: two
	// completed You said: three
	// 3 completed
}

// BatchSeq runs an OpenAI Batch file without holding it in memory: tasks
// are read as slots free, and each result is written as its task ends.
func ExampleClient_BatchSeq() {
	srv := llmtest.NewServer()
	defer srv.Close()
	c, _ := llmdrain.New(llmdrain.Config{APIKey: "sk-example", BaseURL: srv.URL})

	input := strings.NewReader(`{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "one"}]}}
{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "two"}]}}
`)
	var mu sync.Mutex
	answers := map[string]string{}
	res, err := c.BatchSeq(context.Background(), batchfile.Tasks(input), llmdrain.BatchOptions{Concurrency: 2},
		func(r llmdrain.TaskResult) error {
			mu.Lock()
			defer mu.Unlock()
			answers[r.ID] = r.Text // or batchfile.ResultOf(r), written to a batchfile.Output
			return nil
		})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(answers["a"], "/", answers["b"])
	fmt.Println(res.Completed, "completed")
	// Output:
	// You said: one / You said: two
	// 2 completed
}

// Shards split one batch between processes: each runs the tasks whose ID
// hashes to its index, whatever the order of the input.
func ExampleShard() {
	tasks := []string{"request-1", "request-2", "request-3", "request-4"}
	for i := range 2 {
		s := llmdrain.Shard{Index: i, Count: 2}
		var mine []string
		for _, id := range tasks {
			if s.Owns(id) {
				mine = append(mine, id)
			}
		}
		fmt.Println(s, len(mine) > 0)
	}
	// Output:
	// 0/2 true
	// 1/2 true
}

// Fallback targets, each with its own key and model: the primary out of
// rotation after FailoverAfter failed attempts, the call goes on to the
// fallback, whose model answers. The primary is probed again after its
// cool-down, and takes the traffic back once it answers.
func ExampleTarget() {
	primary := llmtest.NewServer(llmtest.WithAPIKey("sk-primary"), llmtest.WithModels("big-model"))
	defer primary.Close()
	backup := llmtest.NewServer(llmtest.WithAPIKey("sk-backup"), llmtest.WithModels("other-model"))
	defer backup.Close()
	primary.Script(llmtest.Status(503), llmtest.Status(503), llmtest.Status(503))

	c, _ := llmdrain.New(llmdrain.Config{
		APIKey:  "sk-primary",
		BaseURL: primary.URL,
		Model:   "big-model",
		Fallbacks: []llmdrain.Target{
			{BaseURL: backup.URL, APIKey: "sk-backup", Model: "other-model"},
		},
	})
	resp, err := c.CreateChatCompletion(context.Background(), openai.ChatCompletionRequest{
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hi"}},
	})
	fmt.Println(resp.Model, err, primary.Stats().Requests, backup.Stats().Requests)
	// Output: other-model <nil> 3 1
}

// A price table in LiteLLM's format, and a batch capped at what it may
// spend: the tasks that could pass the cap do not start, and a run with a
// larger cap and the same journal goes on from there.
func ExampleBatchOptions_maxCost() {
	srv := llmtest.NewServer()
	defer srv.Close()

	prices, err := llmdrain.LoadPrices(strings.NewReader(`{
		"gpt-4o": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05, "max_output_tokens": 16384}
	}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := llmdrain.New(llmdrain.Config{APIKey: "sk-example", BaseURL: srv.URL, Prices: prices})
	if err != nil {
		fmt.Println(err)
		return
	}
	var tasks []llmdrain.Task
	for i := range 5 {
		req := openai.ChatCompletionRequest{MaxCompletionTokens: 50,
			Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: fmt.Sprint("question ", i)}}}
		tasks = append(tasks, llmdrain.Task{Request: &req})
	}
	// Each task may cost up to 50 tokens at $10/M plus its prompt's bound,
	// $0.00078, and really costs $0.000045: under a $0.00085 cap the
	// third could pass it, and does not start.
	res, err := c.Batch(context.Background(), tasks, llmdrain.BatchOptions{Concurrency: 1, MaxCost: 0.00085})
	fmt.Println(res.Completed, "completed,", res.NotRun, "not run, cost", res.Cost)
	fmt.Println(errors.Is(err, llmdrain.ErrBudgetExceeded))
	// Output:
	// 2 completed, 3 not run, cost $0.000090
	// true
}

// go-openai's settings reach through OpenAIConfig: here Azure OpenAI,
// whose deployment URLs go-openai builds and whose api-key header
// llmdrain fills in, for this endpoint only.
func ExampleConfig_openAIConfig() {
	srv := llmtest.NewServer(llmtest.WithAzure(), llmtest.WithAPIKey("azure-key")) // stands in for https://RESOURCE.openai.azure.com
	defer srv.Close()

	c, err := llmdrain.New(llmdrain.Config{
		APIKey:  "azure-key",
		BaseURL: srv.URL,
		Model:   "gpt-4o", // the deployment
		OpenAIConfig: func(oc *openai.ClientConfig) {
			oc.APIType = openai.APITypeAzure
			oc.APIVersion = "2024-10-21"
		},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	text, err := c.Chat(context.Background(), "Hello, Azure")
	fmt.Println(text, err)
	// Output: You said: Hello, Azure <nil>
}

// RegisterReserved keeps a share of the Timeout for a later drain: the
// inbound drain, stuck here, is forced when only the reserve is left, and
// the LLM drain still has time to let its call finish.
func ExampleShutdown_RegisterReserved() {
	sd := &llmdrain.Shutdown{Timeout: time.Second}
	forced := make(chan struct{})
	sd.Register("http", func(ctx context.Context) error {
		<-ctx.Done() // an inbound drain that would take the whole timeout
		close(forced)
		return ctx.Err()
	})
	tracker := llmdrain.NewTracker()
	_, done, err := tracker.Begin(context.Background()) // a background LLM call
	if err != nil {
		fmt.Println(err)
		return
	}
	go func() {
		<-forced
		done() // it finishes after the inbound drain was forced
	}()
	sd.RegisterReserved("llm", 500*time.Millisecond, tracker.Drain)
	sd.Trigger()
	err = sd.Run(context.Background())
	fmt.Println(strings.Contains(err.Error(), `drain "http"`), strings.Contains(err.Error(), `drain "llm"`))
	// Output: true false
}

// Hooks are told of each call, its attempts and waits, with the tokens
// the answer says it used: the base of metrics and cost accounting.
func ExampleHooks() {
	srv := llmtest.NewServer()
	defer srv.Close()
	srv.Script(llmtest.Status(503)) // one failure, then the answer

	hooks := &llmdrain.Hooks{
		AttemptDone: func(a llmdrain.AttemptInfo) {
			fmt.Printf("attempt %d: %d %s retry=%v reason=%q\n", a.Attempt, a.Status, a.Outcome, a.Retry, a.Reason)
		},
		Waited: func(w llmdrain.WaitInfo) { fmt.Println("waited:", w.Reason) },
		CallDone: func(d llmdrain.CallDoneInfo) {
			fmt.Printf("%s %s: error=%q attempts=%d tokens in=%d out=%d\n",
				d.Operation, d.ResponseModel, d.ErrorType, d.Attempts, d.Usage.InputTokens, d.Usage.OutputTokens)
		},
	}
	c, _ := llmdrain.New(llmdrain.Config{APIKey: "sk-example", BaseURL: srv.URL, Hooks: hooks,
		Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(time.Millisecond) }})
	text, err := c.Chat(context.Background(), "Hello, hooks!")
	fmt.Println(text, err)
	// Output:
	// attempt 1: 503 overloaded retry=true reason="5xx"
	// waited: backoff
	// attempt 2: 200 healthy retry=false reason=""
	// chat gpt-4o: error="" attempts=2 tokens in=2 out=4
	// You said: Hello, hooks! <nil>
}

// A provider that meters its key and says so in x-ratelimit-* headers:
// the client reads them and holds its calls until the quota has room,
// instead of sending them to be answered 429.
func ExampleLocalQuota() {
	srv := llmtest.NewServer(llmtest.WithRateLimit(llmtest.RateLimit{
		RequestsPerMinute: 5, Period: 300 * time.Millisecond, // 5 requests per 300 ms
		Headers: true, Hints: true,
	}))
	defer srv.Close()

	var paced atomic.Bool
	c, err := llmdrain.New(llmdrain.Config{
		APIKey:  "sk-example",
		BaseURL: srv.URL,
		Quota:   &llmdrain.LocalQuota{}, // the default; redisquota shares one across replicas
		Hooks: &llmdrain.Hooks{Waited: func(w llmdrain.WaitInfo) {
			if w.Reason == llmdrain.WaitPacing {
				paced.Store(true)
			}
		}},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Shutdown(context.Background())
	answered := 0
	for i := range 12 {
		if _, err := c.Chat(context.Background(), fmt.Sprint("question ", i)); err != nil {
			fmt.Println(err)
			return
		}
		answered++
	}
	fmt.Println(answered, "answered; held for the quota:", paced.Load())
	// Output: 12 answered; held for the quota: true
}
