// Command demo is llmdrain's main job, run offline in a few seconds: an
// LLM-calling service receives SIGTERM in the middle of a burst of calls
// and shuts down without losing any of them.
//
//	go run ./examples/demo
//
// It starts two embedded fake LLM endpoints with realistic latency, a
// primary whose first answers are 503s and a fallback that rate-limits a
// few calls, then fires a burst of plain and streaming calls through one
// llmdrain client. Halfway through it sends itself a real SIGTERM; an
// llmdrain.Shutdown drains the client. At the end it tells what happened
// to every call: completed before the signal, completed during the drain,
// refused with ErrDraining, retried after a 429, failed over to the
// fallback, and that nothing was lost. Every count comes from what actually
// happened: the calls' own results and the fake LLMs' records.
//
// It always runs offline, even with HOLYSHEEP_API_KEY set: its faults
// cannot be scripted on a real API. Output is coloured on a terminal and
// plain when piped or with NO_COLOR set. The last line is a stable summary:
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
	"os/signal"
	"sync"
	"syscall"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

// The scenario. Latency and cadence are chosen so that most calls fired
// before the signal are still in flight when it arrives.
const (
	numCalls     = 32
	signalAfter  = numCalls / 2 // calls fired before SIGTERM
	cadence      = 100 * time.Millisecond
	latency      = 700 * time.Millisecond
	chunkDelay   = 60 * time.Millisecond
	drainTimeout = 10 * time.Second
	primary503s  = 4
)

func main() {
	os.Exit(run(os.Stdout))
}

func run(stdout *os.File) int {
	p := newPrinter(stdout, useColor(stdout))

	// Two fake LLM endpoints. Seeds make their jitter repeatable; the
	// interleaving of concurrent calls still varies a little from run to
	// run, and the account below reports whatever happened.
	primary := llmtest.NewServer(llmtest.WithLatency(latency), llmtest.WithJitter(0.1),
		llmtest.WithChunkDelay(chunkDelay), llmtest.WithSeed(1))
	defer primary.Close()
	fallback := llmtest.NewServer(llmtest.WithLatency(latency), llmtest.WithJitter(0.1),
		llmtest.WithChunkDelay(chunkDelay), llmtest.WithSeed(2))
	defer fallback.Close()
	for range primary503s {
		primary.Script(llmtest.Status(http.StatusServiceUnavailable))
	}
	fallback.Script(llmtest.OK(), llmtest.RateLimitedMS(250*time.Millisecond), llmtest.OK(),
		llmtest.RateLimitedMS(250*time.Millisecond), llmtest.OK(), llmtest.RateLimitedMS(250*time.Millisecond))

	d := &demo{p: p, endpoints: map[string]string{host(primary.URL): "primary", host(fallback.URL): "fallback"}}
	client, err := llmdrain.New(llmdrain.Config{
		APIKey:       "demo-placeholder-key", // the fake LLMs accept any key
		BaseURL:      primary.URL,
		FallbackURLs: []string{fallback.URL},
		// The wire recorder sits under llmdrain's retries, so it sees
		// every attempt of every call.
		HTTPClient: &http.Client{Transport: &wire{base: http.DefaultTransport, d: d}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}

	p.title("llmdrain demo: an LLM service gets SIGTERM mid-burst and loses nothing")
	p.line("  fake LLM %s  %s  ~%v latency; its first %d answers are 503", p.paint(cyan, "primary "), primary.URL, latency, primary503s)
	p.line("  fake LLM %s  %s  ~%v latency; rate-limits a few calls (429)", p.paint(cyan, "fallback"), fallback.URL, latency)
	p.line("  client: %d retries, fails over after %d failed attempts; drain timeout %v", llmdrain.DefaultMaxRetries, llmdrain.DefaultFailoverAfter, drainTimeout)
	p.line("")

	// The shutdown sequence a service runs; here only the LLM client has
	// something to drain. The wrapper only takes notes for the account.
	sd := &llmdrain.Shutdown{Timeout: drainTimeout, Signals: []os.Signal{syscall.SIGTERM}}
	sd.Register("llm", func(ctx context.Context) error {
		n := client.Tracker().InFlight()
		d.drainStarted(time.Now())
		p.event(bold, "drain started: %d calls in flight; from now on new calls are refused with ErrDraining", n)
		err := client.Shutdown(ctx)
		d.drainEnded(time.Now(), err)
		return err
	})
	// Watching SIGTERM ourselves too, before sending it, guarantees it
	// never takes the default action (exit), and dates its arrival.
	seen := make(chan os.Signal, 1)
	signal.Notify(seen, syscall.SIGTERM)
	defer signal.Stop(seen)
	d.start = time.Now()
	p.start = d.start
	shutdownErr := make(chan error, 1)
	go func() { shutdownErr <- sd.Run(context.Background()) }()

	p.event(bold, "firing %d calls, one every %v, plain and streaming alternately", numCalls, cadence)
	var wg sync.WaitGroup
	tick := time.NewTicker(cadence)
	defer tick.Stop()
	for i := range numCalls {
		if i == signalAfter {
			p.event(yellow, "SIGTERM: sending it to ourselves (pid %d), as the kubelet would", os.Getpid())
			if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
				fmt.Fprintln(os.Stderr, "demo:", err)
				return 1
			}
			<-seen
			d.signalled()
			// With no Delay the drain begins microseconds after the
			// signal; waiting for it keeps the story simple: every call
			// from here on meets the drain.
			for deadline := time.Now().Add(time.Second); !client.Tracker().Draining() && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
			}
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

	return d.account(runErr, []*llmtest.Server{primary, fallback})
}

// demo holds the calls and the moments that matter.
type demo struct {
	p         *printer
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

var topics = []string{
	"Summarise the incident report", "Draft a reply to the customer", "Classify this support ticket",
	"Translate the release notes", "Extract the invoice total", "Suggest a title for the article",
}

func (d *demo) newCall(i int) *call {
	c := &call{n: i + 1, stream: i%2 == 1, prompt: fmt.Sprintf("%s (request %02d)", topics[i%len(topics)], i+1)}
	d.mu.Lock()
	d.calls = append(d.calls, c)
	d.mu.Unlock()
	return c
}

// signalled notes when SIGTERM arrived.
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
	c.mu.Lock()
	c.start = time.Now()
	c.mu.Unlock()
	var (
		text string
		err  error
	)
	if c.stream {
		text, err = streamText(ctx, client, c.prompt)
	} else {
		text, err = client.Chat(ctx, c.prompt)
	}
	c.mu.Lock()
	c.end, c.text, c.err = time.Now(), text, err
	c.mu.Unlock()
	d.p.callEnded(d, c)
}

func streamText(ctx context.Context, client *llmdrain.Client, prompt string) (string, error) {
	st, err := client.CreateChatCompletionStream(ctx, openai.ChatCompletionRequest{
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: prompt}},
	})
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
		a := attempt{endpoint: w.d.endpoints[req.URL.Host]}
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
