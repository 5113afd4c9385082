// Command chat sends one prompt to an LLM and prints the answer: the
// smallest complete use of llmdrain, the Go form of the classic
// generate_text(prompt) helper.
//
//	go run ./examples/chat "Why is the sky blue?"
//
// Pressing Ctrl-C (or sending SIGTERM) while the call runs does not lose
// the answer: the call is allowed to finish, for at most -grace, and the
// answer is printed. A second Ctrl-C aborts the call at once.
//
// With HOLYSHEEP_API_KEY set it asks the real endpoint (HOLYSHEEP_BASE_URL,
// or HolySheep's); without it, an embedded fake LLM answers "You said: ...".
//
// Exit codes: 0 answered, 1 the call failed, 2 bad usage or configuration,
// 130 aborted by a second signal or by the -grace deadline.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/examples/internal/offline"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chat", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: chat [flags] [prompt words...]")
		fs.PrintDefaults()
	}
	model := fs.String("model", "", "model to ask (default "+llmdrain.DefaultModel+")")
	grace := fs.Duration("grace", 30*time.Second, "how long an interrupt waits for the answer")
	verbose := fs.Bool("v", false, "log retries and shutdown steps to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	prompt := strings.Join(fs.Args(), " ")
	if prompt == "" {
		prompt = "Hello, world"
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	backend, err := offline.Open(offline.Fake{Latency: 800 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(stderr, "chat:", err)
		return 2
	}
	defer backend.Close()
	cfg := backend.Config
	cfg.Model = *model
	cfg.Logger = logger
	client, err := llmdrain.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "chat:", err)
		return 2
	}

	// The first signal starts the shutdown: the client's drain refuses new
	// calls and waits for ours. A second signal forces the drain,
	// cancelling our call with ErrForcedShutdown.
	sd := &llmdrain.Shutdown{Timeout: *grace, Logger: logger}
	sd.Register("llm", client.Shutdown)
	sd.Notify() // a signal from now on is kept for Run, never fatal

	// Ending runCtx after the call counts as the first signal when none
	// came, so Run drains nothing and returns.
	runCtx, stop := context.WithCancel(context.Background())
	shutdownErr := make(chan error, 1)
	go func() { shutdownErr <- sd.Run(runCtx) }()

	// Say at once that the interrupt was heard, if it came while the call
	// ran; stop below closes Stopping too, with the call over.
	noticed := make(chan struct{})
	go func() {
		defer close(noticed)
		<-sd.Stopping()
		if client.Tracker().InFlight() > 0 {
			fmt.Fprintf(stderr, "chat: interrupted: waiting up to %v for the answer; interrupt again to abort\n", *grace)
		}
	}()

	answer, err := client.Chat(context.Background(), prompt)
	stop()
	sdErr := <-shutdownErr
	<-noticed

	switch {
	case err == nil:
		fmt.Fprintln(stdout, answer)
		return 0
	case errors.Is(err, llmdrain.ErrForcedShutdown) && errors.Is(sdErr, context.DeadlineExceeded):
		fmt.Fprintf(stderr, "chat: gave up: no answer within the %v grace\n", *grace)
		return 130
	case errors.Is(err, llmdrain.ErrForcedShutdown):
		fmt.Fprintln(stderr, "chat: aborted: the call was cancelled before its answer arrived")
		return 130
	default:
		fmt.Fprintln(stderr, "chat:", err)
		return 1
	}
}
