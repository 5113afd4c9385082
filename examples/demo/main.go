// Command demo is llmdrain's main job, shown in a few seconds: an
// LLM-calling service receives SIGTERM in the middle of a burst of calls
// and shuts down without losing any of them.
//
//	go run ./examples/demo
//
// It fires a burst of plain and streaming calls through one llmdrain
// client. Halfway through it sends itself a real SIGTERM; an
// llmdrain.Shutdown drains the client. At the end it tells what happened
// to every call: completed before the signal, completed during the drain,
// refused with ErrDraining, and that nothing was lost. Every count comes
// from what actually happened, never from the script.
//
// It runs in one of two modes, named in its first line:
//
//   - Offline, when HOLYSHEEP_API_KEY is not set: nothing leaves the
//     machine. Two embedded fake LLM endpoints with realistic latency stand
//     in for the API, a primary whose first answers are 503s and a fallback
//     that rate-limits a few calls, so the account also shows calls retried
//     after a 429 and failed over to the fallback. 32 calls; every answer is
//     cross-checked against the fake LLMs' own records.
//   - Online, when HOLYSHEEP_API_KEY is set: the calls go to the real
//     endpoint (HOLYSHEEP_BASE_URL, or HolySheep's), read from the
//     environment by llmdrain itself, with no scripted faults and no
//     fallback. They are billed, so the burst is small: 8 calls, of which
//     only the 4 before the signal are sent, with short prompts and at most
//     24 tokens per answer. A real API keeps no records the demo can read,
//     so the answers are not cross-checked and the account says so:
//     completed then means that a whole answer came back.
//
// Output is coloured on a terminal and plain when piped or with NO_COLOR
// set. The API key is never printed. The last line is a stable summary:
//
//	summary: 32 calls, 16 completed, 16 refused, 0 lost
//
// The exit code is 0 when nothing was lost and the drain finished in time.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sync"
	"syscall"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/examples/internal/offline"
	"github.com/llmdrain/llmdrain/llmtest"
)

// cadence is the time between two calls of the burst, in both modes.
const cadence = 100 * time.Millisecond

// The offline scenario. Latency and cadence are chosen so that most calls
// fired before the signal are still in flight when it arrives.
const (
	numCalls     = 32
	latency      = 700 * time.Millisecond
	chunkDelay   = 60 * time.Millisecond
	drainTimeout = 10 * time.Second
	primary503s  = 4
)

// The online scenario: real calls are billed, so few of them, short
// prompts and short answers. A real API takes longer than the fake one to
// answer, so the calls sent are in flight at the signal all the same.
const (
	onlineCalls        = 8
	onlineMaxTokens    = 24
	onlineDrainTimeout = 30 * time.Second
)

// scenario is what differs between the two modes.
type scenario struct {
	online       bool
	calls        int
	drainTimeout time.Duration
	maxTokens    int    // per answer; 0 means no limit
	primary      string // name of the endpoint tried first
	prompt       func(i int) string
	fakes        []*llmtest.Server // offline: the fake LLMs, whose records are checked
}

func main() {
	os.Exit(run(os.Stdout))
}

func run(stdout *os.File) int {
	d := &demo{p: newPrinter(stdout, useColor(stdout))}
	p := d.p
	var cfg llmdrain.Config
	if offline.Online() {
		cfg = d.online()
	} else {
		var closeFakes func()
		cfg, closeFakes = d.offline()
		defer closeFakes()
	}
	// The wire recorder sits under llmdrain's retries, so it sees every
	// attempt of every call.
	cfg.HTTPClient = &http.Client{Transport: &wire{base: http.DefaultTransport, d: d}}
	client, err := llmdrain.New(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	d.banner()

	// The shutdown sequence a service runs; here only the LLM client has
	// something to drain. The wrapper only takes notes for the account.
	sd := &llmdrain.Shutdown{Timeout: d.sc.drainTimeout, Signals: []os.Signal{syscall.SIGTERM}}
	sd.Register("llm", func(ctx context.Context) error {
		n := client.Tracker().InFlight()
		d.drainStarted(time.Now())
		p.event(bold, "drain started: %d calls in flight; from now on new calls are refused with ErrDraining", n)
		err := client.Shutdown(ctx)
		d.drainEnded(time.Now(), err)
		return err
	})
	// Watch SIGTERM now, before Run may have started, so the signal we
	// send never takes its default action (exit).
	sd.Notify()
	d.start = time.Now()
	p.start = d.start
	shutdownErr := make(chan error, 1)
	go func() { shutdownErr <- sd.Run(context.Background()) }()

	signalAfter := d.sc.calls / 2
	p.event(bold, "firing %d calls, one every %v, plain and streaming alternately", d.sc.calls, cadence)
	var wg sync.WaitGroup
	tick := time.NewTicker(cadence)
	defer tick.Stop()
	for i := range d.sc.calls {
		if i == signalAfter {
			p.event(yellow, "SIGTERM: sending it to ourselves (pid %d), as the kubelet would", os.Getpid())
			if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
				fmt.Fprintln(os.Stderr, "demo:", err)
				return 1
			}
			select {
			case <-sd.Stopping():
			case <-time.After(5 * time.Second):
				fmt.Fprintln(os.Stderr, "demo: SIGTERM sent, but the shutdown did not begin")
				return 1
			}
			d.signalled()
			// Stopping is closed as the shutdown begins, a moment before
			// the drain does. The next call comes a beat later, as new
			// traffic would, and meets the drain.
			<-tick.C
		}
		c := d.newCall(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.do(client, c)
		}()
		<-tick.C
	}
	wg.Wait()
	runErr := <-shutdownErr

	return d.account(runErr)
}

// offline sets up the offline scenario: it starts the two fake LLM
// endpoints. The caller must call closeFakes.
func (d *demo) offline() (cfg llmdrain.Config, closeFakes func()) {
	// Seeds make their jitter repeatable; the interleaving of concurrent
	// calls still varies a little from run to run, and the account
	// reports whatever happened.
	primary := llmtest.NewServer(llmtest.WithLatency(latency), llmtest.WithJitter(0.1),
		llmtest.WithChunkDelay(chunkDelay), llmtest.WithSeed(1))
	fallback := llmtest.NewServer(llmtest.WithLatency(latency), llmtest.WithJitter(0.1),
		llmtest.WithChunkDelay(chunkDelay), llmtest.WithSeed(2))
	for range primary503s {
		primary.Script(llmtest.Status(http.StatusServiceUnavailable))
	}
	fallback.Script(llmtest.OK(), llmtest.RateLimitedMS(250*time.Millisecond), llmtest.OK(),
		llmtest.RateLimitedMS(250*time.Millisecond), llmtest.OK(), llmtest.RateLimitedMS(250*time.Millisecond))

	d.sc = scenario{
		calls:        numCalls,
		drainTimeout: drainTimeout,
		primary:      "primary",
		prompt: func(i int) string {
			return fmt.Sprintf("%s (request %02d)", topics[i%len(topics)], i+1)
		},
		fakes: []*llmtest.Server{primary, fallback},
	}
	d.endpoints = map[string]string{host(primary.URL): "primary", host(fallback.URL): "fallback"}
	cfg = llmdrain.Config{
		APIKey:       "demo-placeholder-key", // the fake LLMs accept any key
		BaseURL:      primary.URL,
		FallbackURLs: []string{fallback.URL},
	}
	return cfg, func() {
		primary.Close()
		fallback.Close()
	}
}

// online sets up the online scenario. The config leaves the key and the
// endpoint empty: llmdrain reads them from the environment, as a service
// of your own would.
func (d *demo) online() llmdrain.Config {
	d.sc = scenario{
		online:       true,
		calls:        onlineCalls,
		drainTimeout: onlineDrainTimeout,
		maxTokens:    onlineMaxTokens,
		primary:      "api",
		prompt:       func(i int) string { return onlinePrompts[i%len(onlinePrompts)] },
	}
	d.endpoints = map[string]string{host(offline.RealEndpoint()): "api"}
	return llmdrain.Config{}
}

// banner says which mode runs and against what.
func (d *demo) banner() {
	p := d.p
	if d.sc.online {
		p.title("llmdrain demo, online: an LLM service gets SIGTERM mid-burst and loses nothing")
		p.line("  online: $%s is set, so these are real, billed calls to %s, model %s",
			llmdrain.EnvAPIKey, p.paint(cyan, offline.RealEndpoint()), llmdrain.DefaultModel)
		p.line("  kept small: %d calls, of which at most %d are sent; short prompts, at most %d tokens per answer",
			d.sc.calls, d.sc.calls/2, d.sc.maxTokens)
		p.line("  no scripted faults and no fallback: whatever the API does is reported as it happened")
		p.line("  client: %d retries; drain timeout %v", llmdrain.DefaultMaxRetries, d.sc.drainTimeout)
	} else {
		primary, fallback := d.sc.fakes[0], d.sc.fakes[1]
		p.title("llmdrain demo, offline: an LLM service gets SIGTERM mid-burst and loses nothing")
		p.line("  offline: $%s is not set, so embedded fake LLMs answer; nothing leaves this machine", llmdrain.EnvAPIKey)
		p.line("  fake LLM %s  %s  ~%v latency; its first %d answers are 503", p.paint(cyan, "primary "), primary.URL, latency, primary503s)
		p.line("  fake LLM %s  %s  ~%v latency; rate-limits a few calls (429)", p.paint(cyan, "fallback"), fallback.URL, latency)
		p.line("  client: %d retries, fails over after %d failed attempts; drain timeout %v",
			llmdrain.DefaultMaxRetries, llmdrain.DefaultFailoverAfter, d.sc.drainTimeout)
	}
	p.line("")
}

// demo holds the calls and the moments that matter.
type demo struct {
	p         *printer
	sc        scenario
	endpoints map[string]string // host:port -> name

	mu         sync.Mutex
	start      time.Time
	calls      []*call
	signalAt   time.Time
	drainStart time.Time
	drainEnd   time.Time
	drainErr   error
}

// call is one LLM call and everything that happened to it.
type call struct {
	n      int
	stream bool
	prompt string

	mu       sync.Mutex
	start    time.Time
	end      time.Time
	attempts []attempt
	text     string
	err      error
}

// attempt is one HTTP exchange, as seen on the wire under the retries.
type attempt struct {
	endpoint string
	status   int // 0 when no response came
}

// topics are the offline prompts; the fake LLM echoes them.
var topics = []string{
	"Summarise the incident report", "Draft a reply to the customer", "Classify this support ticket",
	"Translate the release notes", "Extract the invoice total", "Suggest a title for the article",
}

// onlinePrompts are short and ask for short answers, one per call.
var onlinePrompts = []string{
	"In one short sentence: why is the sky blue?",
	"Name three prime numbers.",
	"Suggest a one-word name for a cat.",
	"Translate 'good morning' into French.",
	"What is 17 times 3? Answer with the number.",
	"Give one synonym for 'quick'.",
	"Name a planet with rings.",
	"Say hello in five words or fewer.",
}

func (d *demo) newCall(i int) *call {
	c := &call{n: i + 1, stream: i%2 == 1, prompt: d.sc.prompt(i)}
	d.mu.Lock()
	d.calls = append(d.calls, c)
	d.mu.Unlock()
	return c
}

// signalled notes when the shutdown began.
func (d *demo) signalled() {
	d.mu.Lock()
	d.signalAt = time.Now()
	d.mu.Unlock()
}

func (d *demo) drainStarted(t time.Time) {
	d.mu.Lock()
	d.drainStart = t
	d.mu.Unlock()
}

func (d *demo) drainEnded(t time.Time, err error) {
	d.mu.Lock()
	d.drainEnd, d.drainErr = t, err
	took := t.Sub(d.drainStart)
	d.mu.Unlock()
	if err != nil {
		d.p.event(red, "drain forced after %v: %v", took.Round(time.Millisecond), err)
		return
	}
	d.p.event(green, "drain finished in %v: every call in flight ran to its end", took.Round(time.Millisecond))
}

type callKey struct{}

// do runs c through the client and prints how it ended.
func (d *demo) do(client *llmdrain.Client, c *call) {
	ctx := context.WithValue(context.Background(), callKey{}, c)
	req := openai.ChatCompletionRequest{
		Messages:            []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: c.prompt}},
		MaxCompletionTokens: d.sc.maxTokens,
	}
	c.mu.Lock()
	c.start = time.Now()
	c.mu.Unlock()
	var (
		text string
		err  error
	)
	if c.stream {
		text, err = streamText(ctx, client, req)
	} else {
		text, err = chatText(ctx, client, req)
	}
	c.mu.Lock()
	c.end, c.text, c.err = time.Now(), text, err
	c.mu.Unlock()
	d.p.callEnded(d, c)
}

// chatText is client.Chat with a request of our own, for its token limit.
func chatText(ctx context.Context, client *llmdrain.Client, req openai.ChatCompletionRequest) (string, error) {
	resp, err := client.CreateChatCompletion(ctx, req)
	if err != nil {
		return "", err
	}
	if len(resp.Choices) == 0 {
		return "", llmdrain.ErrEmptyResponse
	}
	return resp.Choices[0].Message.Content, nil
}

// streamText returns the streamed answer, and nil only if the stream ran
// to its end: llmdrain reports a stream cut before its closing [DONE] as
// io.ErrUnexpectedEOF.
func streamText(ctx context.Context, client *llmdrain.Client, req openai.ChatCompletionRequest) (string, error) {
	st, err := client.CreateChatCompletionStream(ctx, req)
	if err != nil {
		return "", err
	}
	defer st.Close()
	var text string
	for {
		chunk, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return text, nil
		}
		if err != nil {
			return text, err
		}
		for _, ch := range chunk.Choices {
			text += ch.Delta.Content
		}
	}
}

// wire records every attempt against the call it belongs to; the call
// rides in the request's context, which llmdrain passes to each attempt.
type wire struct {
	base http.RoundTripper
	d    *demo
}

func (w *wire) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := w.base.RoundTrip(req)
	if c, ok := req.Context().Value(callKey{}).(*call); ok {
		name, known := w.d.endpoints[req.URL.Host]
		if !known {
			name = req.URL.Host
		}
		a := attempt{endpoint: name}
		if err == nil {
			a.status = resp.StatusCode
		}
		c.mu.Lock()
		c.attempts = append(c.attempts, a)
		c.mu.Unlock()
	}
	return resp, err
}

// CloseIdleConnections lets the client's Shutdown reach the base transport.
func (w *wire) CloseIdleConnections() {
	if c, ok := w.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
}

func host(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	return u.Host
}
