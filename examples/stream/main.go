// Command stream streams an LLM's answer to the terminal as it is
// generated.
//
//	go run ./examples/stream "Tell me a short story"
//
// SIGTERM or Ctrl-C mid-stream does not cut the answer: the stream is
// allowed to finish, for at most -grace, and the command exits 0. A second
// signal aborts at once. A stream that the server or the network cuts off
// is reported as truncated, never passed off as a complete answer: the
// library turns a stream that ends without its closing "data: [DONE]" into
// io.ErrUnexpectedEOF.
//
// With HOLYSHEEP_API_KEY set it asks the real endpoint; without it, an
// embedded fake LLM streams "You said: ..." word by word.
//
// Exit codes: 0 complete answer, 1 the call failed, 2 bad usage or
// configuration, 3 the answer was truncated, 130 aborted by a second signal
// or by the -grace deadline.
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

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/examples/internal/offline"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("stream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: stream [flags] [prompt words...]")
		fs.PrintDefaults()
	}
	model := fs.String("model", "", "model to ask (default "+llmdrain.DefaultModel+")")
	grace := fs.Duration("grace", 30*time.Second, "how long a signal waits for the stream to finish")
	verbose := fs.Bool("v", false, "log retries and shutdown steps to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	prompt := strings.Join(fs.Args(), " ")
	if prompt == "" {
		prompt = "Tell me about graceful shutdown, one word at a time"
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	backend, err := offline.Open(offline.Fake{Latency: 300 * time.Millisecond, ChunkDelay: 80 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(stderr, "stream:", err)
		return 2
	}
	defer backend.Close()
	cfg := backend.Config
	cfg.Model = *model
	cfg.Logger = logger
	client, err := llmdrain.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "stream:", err)
		return 2
	}

	// The first signal starts the client's drain, which waits for the
	// stream until it is closed; a second one cancels it.
	sd := &llmdrain.Shutdown{Timeout: *grace, Logger: logger}
	sd.Register("llm", client.Shutdown)
	sd.Notify() // a signal from now on is kept for Run, never fatal
	runCtx, stop := context.WithCancel(context.Background())
	shutdownErr := make(chan error, 1)
	go func() { shutdownErr <- sd.Run(runCtx) }()

	// Say at once that the signal was heard, if it came mid-stream; stop
	// below closes Stopping too, with the stream over.
	noticed := make(chan struct{})
	go func() {
		defer close(noticed)
		<-sd.Stopping()
		if client.Tracker().InFlight() > 0 {
			fmt.Fprintf(stderr, "\nstream: signal received: letting the answer finish (up to %v); signal again to abort\n", *grace)
		}
	}()

	words, err := streamAnswer(client, prompt, stdout)
	stop()
	sdErr := <-shutdownErr
	<-noticed

	switch {
	case err == nil:
		fmt.Fprintln(stdout)
		return 0
	case errors.Is(err, llmdrain.ErrForcedShutdown) && errors.Is(sdErr, context.DeadlineExceeded):
		fmt.Fprintf(stderr, "\nstream: gave up after the %v grace: answer incomplete (%d pieces received)\n", *grace, words)
		return 130
	case errors.Is(err, llmdrain.ErrForcedShutdown):
		fmt.Fprintf(stderr, "\nstream: aborted: answer incomplete (%d pieces received)\n", words)
		return 130
	case errors.Is(err, io.ErrUnexpectedEOF):
		fmt.Fprintf(stderr, "\nstream: truncated: the stream was cut off after %d pieces; the answer above is incomplete\n", words)
		return 3
	default:
		fmt.Fprintln(stderr, "\nstream:", err)
		return 1
	}
}

// streamAnswer copies the answer to w as it arrives and reports how many
// content pieces it wrote. It returns nil only for a complete answer.
func streamAnswer(client *llmdrain.Client, prompt string, w io.Writer) (int, error) {
	stream, err := client.CreateChatCompletionStream(context.Background(), openai.ChatCompletionRequest{
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: prompt}},
	})
	if err != nil {
		return 0, err
	}
	// Closing the stream is what ends the call for the drain.
	defer stream.Close()
	pieces := 0
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return pieces, nil
		}
		if err != nil {
			return pieces, err
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content == "" {
				continue
			}
			if _, err := io.WriteString(w, c.Delta.Content); err != nil {
				return pieces, err
			}
			pieces++
		}
	}
}
