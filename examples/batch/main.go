// Command batch runs a file of prompts through an LLM at bounded
// concurrency, with a progress line, a journal, and resume after an
// interrupt.
//
//	go run ./examples/batch prompts.txt
//	go run ./examples/batch -out answers.jsonl -concurrency 4 prompts.jsonl
//
// The input has one prompt per line (blank lines are skipped), or is JSON
// Lines, one {"id": "...", "prompt": "...", "model": "..."} per line (id
// and model optional); a file ending in .jsonl, or whose first line starts
// with "{", is read as JSON Lines.
//
// Every finished prompt is recorded in a journal (-journal, by default the
// input's name plus ".journal"). Ctrl-C or SIGTERM stops starting prompts
// and lets the ones running finish, for at most -grace; a second signal
// cuts them. Running the same command again resumes: prompts the journal
// records as answered are not sent again.
//
// At the end it prints a summary table: completed, failed, not run, tokens.
// With -out, every answer (earlier runs' included) is written as JSON Lines
// in input order.
//
// With HOLYSHEEP_API_KEY set it asks the real endpoint; without it, an
// embedded fake LLM answers "You said: ...".
//
// Exit codes: 0 every prompt answered, 1 some failed, 2 bad usage, input
// or configuration, 130 interrupted with prompts not run (run it again to
// resume).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/examples/internal/offline"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout io.Writer, stderr *os.File) int {
	fs := flag.NewFlagSet("batch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: batch [flags] PROMPTS_FILE")
		fs.PrintDefaults()
	}
	concurrency := fs.Int("concurrency", llmdrain.DefaultBatchConcurrency, "prompts in flight at once")
	journalPath := fs.String("journal", "", "journal file (default PROMPTS_FILE.journal)")
	outPath := fs.String("out", "", "write every answer as JSON Lines to this file")
	model := fs.String("model", "", "model for prompts that name none (default "+llmdrain.DefaultModel+")")
	grace := fs.Duration("grace", 60*time.Second, "how long an interrupt waits for running prompts")
	verbose := fs.Bool("v", false, "log retries and shutdown steps to stderr")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	input := fs.Arg(0)
	if *journalPath == "" {
		*journalPath = input + ".journal"
	}
	tasks, err := readTasks(input)
	if err != nil {
		fmt.Fprintln(stderr, "batch:", err)
		return 2
	}

	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	backend, err := offline.Open(offline.Fake{Latency: 200 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(stderr, "batch:", err)
		return 2
	}
	defer backend.Close()
	cfg := backend.Config
	cfg.Model = *model
	cfg.Logger = logger
	client, err := llmdrain.New(cfg)
	if err != nil {
		fmt.Fprintln(stderr, "batch:", err)
		return 2
	}

	// The first signal drains the client: Batch starts no more prompts
	// and the running ones finish. A second one cuts them.
	sd := &llmdrain.Shutdown{Timeout: *grace, Logger: logger}
	sd.Register("llm", client.Shutdown)
	sd.Notify() // a signal from now on is kept for Run, never fatal
	runCtx, stop := context.WithCancel(context.Background())
	shutdownErr := make(chan error, 1)
	go func() { shutdownErr <- sd.Run(runCtx) }()

	// Say at once that the interrupt was heard. stop below, once the
	// batch has ended by itself, closes Stopping too: nothing to explain.
	noticed := make(chan struct{})
	go func() {
		defer close(noticed)
		<-sd.Stopping()
		if runCtx.Err() == nil {
			fmt.Fprintf(stderr, "\nbatch: interrupted: finishing the %d running prompts (up to %v); interrupt again to cut them\n",
				client.Tracker().InFlight(), *grace)
		}
	}()

	prog := newProgressLine(stderr)
	res, err := client.Batch(context.Background(), tasks, llmdrain.BatchOptions{
		Concurrency: *concurrency,
		Journal:     *journalPath,
		OnProgress:  prog.update,
	})
	prog.done()
	stop()
	<-shutdownErr
	<-noticed

	if res == nil { // nothing ran: bad input or an unusable journal
		if errors.Is(err, llmdrain.ErrJournalLocked) {
			fmt.Fprintf(stderr, "batch: %s is in use by another batch\n", *journalPath)
		} else {
			fmt.Fprintln(stderr, "batch:", err)
		}
		return 2
	}
	printSummary(stdout, input, *journalPath, res)
	if *outPath != "" {
		if err := writeAnswers(*outPath, res); err != nil {
			fmt.Fprintln(stderr, "batch:", err)
			return 1
		}
	}
	switch {
	case res.NotRun > 0:
		fmt.Fprintf(stderr, "batch: %d prompts not run; run the same command again to resume\n", res.NotRun)
		return 130
	case res.Failed > 0:
		return 1
	case err != nil: // the journal could not be closed cleanly
		fmt.Fprintln(stderr, "batch:", err)
		return 1
	}
	return 0
}

// inputLine is one line of a JSON Lines input.
type inputLine struct {
	ID     string `json:"id"`
	Prompt string `json:"prompt"`
	Model  string `json:"model"`
}

// readTasks reads the prompts file, plain or JSON Lines.
func readTasks(path string) ([]llmdrain.Task, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	jsonl := strings.HasSuffix(path, ".jsonl") || bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{"))
	var tasks []llmdrain.Task
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		if !jsonl {
			tasks = append(tasks, llmdrain.Task{Prompt: line})
			continue
		}
		var in inputLine
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&in); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if strings.TrimSpace(in.Prompt) == "" {
			return nil, fmt.Errorf("%s:%d: no prompt", path, n)
		}
		t := llmdrain.Task{ID: in.ID, Prompt: in.Prompt}
		if in.Model != "" {
			t.Request = &openai.ChatCompletionRequest{
				Model:    in.Model,
				Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: in.Prompt}},
			}
		}
		tasks = append(tasks, t)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(tasks) == 0 {
		return nil, fmt.Errorf("%s: no prompts", path)
	}
	return tasks, nil
}

// progressLine shows the batch's progress on stderr: rewritten in place on
// a terminal, otherwise a line at most every second, and the last one.
type progressLine struct {
	w    io.Writer
	tty  bool
	mu   sync.Mutex
	last time.Time
	p    llmdrain.Progress
	seen bool
}

func newProgressLine(f *os.File) *progressLine {
	fi, err := f.Stat()
	return &progressLine{w: f, tty: err == nil && fi.Mode()&os.ModeCharDevice != 0}
}

func (l *progressLine) update(p llmdrain.Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.p, l.seen = p, true
	switch {
	case l.tty:
		fmt.Fprintf(l.w, "\r\x1b[K%s", p)
	case time.Since(l.last) >= time.Second:
		fmt.Fprintln(l.w, p)
		l.last = time.Now()
	}
}

func (l *progressLine) done() {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case !l.seen:
	case l.tty:
		fmt.Fprintln(l.w)
	default:
		fmt.Fprintln(l.w, l.p)
	}
}

func printSummary(w io.Writer, input, journal string, res *llmdrain.BatchResult) {
	var all openai.Usage
	for _, r := range res.Results {
		all.PromptTokens += r.Usage.PromptTokens
		all.CompletionTokens += r.Usage.CompletionTokens
		all.TotalTokens += r.Usage.TotalTokens
	}
	earlier := ""
	if res.Resumed > 0 {
		earlier = fmt.Sprintf("%d answered in an earlier run", res.Resumed)
	}
	row := func(label, value, note string) {
		fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf("  %-10s %7s  %s", label, value, note), " "))
	}
	fmt.Fprintf(w, "batch summary: %s (journal %s)\n", input, journal)
	row("completed", fmt.Sprint(res.Completed), earlier)
	row("failed", fmt.Sprint(res.Failed), "")
	row("not run", fmt.Sprint(res.NotRun), "")
	row("tokens", fmt.Sprint(all.TotalTokens), fmt.Sprintf("this run %d: %d prompt, %d completion",
		res.Usage.TotalTokens, res.Usage.PromptTokens, res.Usage.CompletionTokens))
	row("elapsed", fmt.Sprintf("%.1fs", res.Elapsed.Seconds()), "")
	shown := 0
	for _, r := range res.Results {
		if r.Status == llmdrain.StatusFailed && shown < 5 {
			fmt.Fprintf(w, "  failed %s: %v\n", r.ID, r.Err)
			shown++
		}
	}
	if shown < res.Failed {
		fmt.Fprintf(w, "  ... and %d more failed\n", res.Failed-shown)
	}
}

// answer is one line of the -out file.
type answer struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Text   string `json:"text,omitempty"`
	Error  string `json:"error,omitempty"`
}

func writeAnswers(path string, res *llmdrain.BatchResult) error {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	for _, r := range res.Results {
		a := answer{ID: r.ID, Status: string(r.Status), Text: r.Text}
		if r.Err != nil {
			a.Error = r.Err.Error()
		}
		if err := enc.Encode(a); err != nil {
			return err
		}
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}
