// Command llmdrain runs OpenAI Batch API files against any
// OpenAI-compatible endpoint, HolySheep's by default, at bounded
// concurrency, with a journal, resume, shards and a drain on SIGTERM.
//
// Install it from a clone of the repository:
//
//	cd cmd/llmdrain && go install .
//
// Run a batch file (the OpenAI Batch input format: one
// {"custom_id", "method", "url", "body"} a line; chat completions and
// embeddings), writing results in the OpenAI Batch output format:
//
//	export HOLYSHEEP_API_KEY=...
//	llmdrain batch -in requests.jsonl -out results.jsonl
//
// The whole input is checked first: a bad line (torn, not JSON, a
// duplicate custom_id, an unsupported url, a body that is not a request) is
// reported with its number, and nothing is sent.
//
// Flags of llmdrain batch:
//
//	-in FILE          input, OpenAI Batch format (required)
//	-out FILE         output, OpenAI Batch output format (required)
//	-journal FILE     journal (default OUT.journal)
//	-concurrency N    requests in flight at once (default 8)
//	-shard I/N        run only shard I of N (custom_ids hashed); "-shard N"
//	                  takes I from $JOB_COMPLETION_INDEX (Kubernetes Indexed
//	                  Job). OUT becomes OUT's name with ".I-of-N" before its
//	                  extension, so that every shard writes its own file
//	-max-tasks N      send at most N requests in this run, then stop as for
//	                  a signal (0: no limit)
//	-base-url URL     API root (default $HOLYSHEEP_BASE_URL, then HolySheep's)
//	-model NAME       model of chat requests whose body names none
//	-prices FILE      price table in LiteLLM's model_prices_and_context_window.json
//	                  format: the summary says what the answers cost
//	-max-cost USD     stop before the answers of this batch (its journal's
//	                  earlier runs included) could cost more than USD; needs
//	                  -prices. Raise it and run again to go on
//	-grace D          how long a signal waits for running requests (default 60s)
//	-progress D       interval of the progress lines when stderr is not a
//	                  terminal (default 10s); on a terminal, a progress bar
//	-v                log retries and shutdown steps
//
// The API key is read from $HOLYSHEEP_API_KEY only, never from a flag,
// where ps would show it.
//
// SIGTERM or SIGINT stops sending new requests and lets the running ones
// finish for at most -grace; a second signal cuts them. Running the same
// command again resumes: requests with a result in the output file are not
// sent again, and no custom_id is ever written twice. A request that
// failed (an error status, or no answer after the retries) has its result
// in the output, with its error, and is not retried by a resumed run.
//
// Merge the shards' outputs into one file, in input order:
//
//	llmdrain batch merge -in requests.jsonl -out results.jsonl results.*-of-4.jsonl
//
// Exit codes of llmdrain batch: 0 every request answered; 1 some failed
// (their results hold the errors); 2 bad usage, configuration (no API key)
// or input, nothing sent; 3 stopped (a signal, -max-tasks or -max-cost)
// with requests left: run the same command again to resume (after -max-cost,
// with a larger one). Of llmdrain batch merge: 0 every custom_id has a result; 1 some are missing (they are listed); 2 bad
// usage or input.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/batchfile"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailed  = 1 // batch: some requests failed; merge: custom_ids missing
	exitUsage   = 2
	exitStopped = 3
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

const usage = `usage:
  llmdrain batch -in REQUESTS.jsonl -out RESULTS.jsonl [flags]
  llmdrain batch merge -in REQUESTS.jsonl -out MERGED.jsonl SHARD_RESULTS...
run "llmdrain batch -h" for the flags`

func run(args []string, stdout io.Writer, stderr *os.File, getenv func(string) string) int {
	if len(args) == 0 || args[0] != "batch" {
		fmt.Fprintln(stderr, usage)
		return exitUsage
	}
	if len(args) > 1 && args[1] == "merge" {
		return merge(args[2:], stdout, stderr)
	}
	return batch(args[1:], stdout, stderr, getenv)
}

// options are llmdrain batch's flags.
type options struct {
	in, out, journal string
	concurrency      int
	shard            string
	maxTasks         int
	baseURL, model   string
	prices           string
	maxCost          float64
	grace, every     time.Duration
	verbose          bool
}

func batch(args []string, stdout io.Writer, stderr *os.File, getenv func(string) string) int {
	fs := flag.NewFlagSet("llmdrain batch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.in, "in", "", "input file, OpenAI Batch format (required)")
	fs.StringVar(&o.out, "out", "", "output file, OpenAI Batch output format (required)")
	fs.StringVar(&o.journal, "journal", "", "journal file (default OUT.journal)")
	fs.IntVar(&o.concurrency, "concurrency", llmdrain.DefaultBatchConcurrency, "requests in flight at once")
	fs.StringVar(&o.shard, "shard", "", `run one shard: "I/N", or "N" with I from $JOB_COMPLETION_INDEX`)
	fs.IntVar(&o.maxTasks, "max-tasks", 0, "send at most this many requests in this run, then stop (0: no limit)")
	fs.StringVar(&o.baseURL, "base-url", "", "API root (default $"+llmdrain.EnvBaseURL+", then "+llmdrain.DefaultBaseURL+")")
	fs.StringVar(&o.model, "model", "", "model of chat requests whose body names none (default "+llmdrain.DefaultModel+")")
	fs.StringVar(&o.prices, "prices", "", "price table, LiteLLM's model_prices_and_context_window.json format: report what the answers cost")
	fs.Float64Var(&o.maxCost, "max-cost", 0, "stop before the batch's answers, earlier runs included, could cost more than this many US dollars; needs -prices (0: no cap)")
	fs.DurationVar(&o.grace, "grace", 60*time.Second, "how long a signal waits for running requests")
	fs.DurationVar(&o.every, "progress", 10*time.Second, "interval of progress lines when stderr is not a terminal")
	fs.BoolVar(&o.verbose, "v", false, "log retries and shutdown steps to stderr")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "llmdrain: "+format+"\n", a...)
		return exitUsage
	}
	if fs.NArg() > 0 || o.in == "" || o.out == "" {
		fs.Usage()
		return exitUsage
	}
	if o.concurrency <= 0 || o.maxTasks < 0 {
		return fail("-concurrency must be positive and -max-tasks not negative")
	}
	if !(o.maxCost >= 0) || o.maxCost > 0 && o.prices == "" {
		return fail("-max-cost must not be negative, and needs -prices")
	}
	var prices llmdrain.Prices
	if o.prices != "" {
		f, err := os.Open(o.prices)
		if err != nil {
			return fail("%v", err)
		}
		prices, err = llmdrain.LoadPrices(f)
		f.Close()
		if err != nil {
			return fail("%s: %v", o.prices, err)
		}
	}
	shard, err := parseShard(o.shard, getenv("JOB_COMPLETION_INDEX"))
	if err != nil {
		return fail("%v", err)
	}
	if shard.Count > 0 {
		o.out = shardPath(o.out, shard)
	}
	if o.journal == "" {
		o.journal = o.out + ".journal"
	}
	if getenv(llmdrain.EnvAPIKey) == "" {
		return fail("no API key: set %s (it is never read from a flag, where ps would show it)", llmdrain.EnvAPIKey)
	}

	// Check the whole input before anything is paid for.
	in, err := os.Open(o.in)
	if err != nil {
		return fail("%v", err)
	}
	defer in.Close()
	sum, err := batchfile.Check(in, shard)
	if err != nil {
		fmt.Fprintf(stderr, "llmdrain: %s has bad lines, nothing was sent:\n", o.in)
		for _, e := range splitJoined(err) {
			fmt.Fprintf(stderr, "  %s:%v\n", o.in, e)
		}
		return exitUsage
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return fail("%v", err)
	}

	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	client, err := llmdrain.New(llmdrain.Config{BaseURL: o.baseURL, Model: o.model, Logger: logger, Prices: prices})
	if err != nil {
		return fail("%v", err)
	}

	out, err := batchfile.OpenOutput(o.out)
	if err != nil {
		return fail("%v", err)
	}
	if out.Torn() > 0 {
		fmt.Fprintf(stderr, "llmdrain: %s: dropped a torn last line (%d bytes) left by an interrupted run; its request runs again\n", o.out, out.Torn())
	}

	// The first signal drains the client: no request starts, the running
	// ones finish. A second one cuts them.
	sd := &llmdrain.Shutdown{Timeout: o.grace, Logger: logger}
	sd.Register("llm", client.Shutdown)
	sd.Notify()
	runCtx, stop := context.WithCancel(context.Background())
	shutdownErr := make(chan error, 1)
	go func() { shutdownErr <- sd.Run(runCtx) }()
	noticed := make(chan struct{})
	go func() {
		defer close(noticed)
		<-sd.Stopping()
		if runCtx.Err() == nil {
			fmt.Fprintf(stderr, "\nllmdrain: stopping: finishing the %d running requests (up to %v); signal again to cut them\n",
				client.Tracker().InFlight(), o.grace)
		}
	}()

	// The tasks to run: the shard's (BatchSeq skips the others), without
	// those already in the output, at most -max-tasks of them.
	earlier, capped := out.Len(), false
	tasks := func(yield func(llmdrain.Task, error) bool) {
		sent := 0
		for t, err := range batchfile.Tasks(in) {
			if err == nil && shard.Owns(t.ID) {
				if out.Has(t.ID) {
					continue
				}
				if o.maxTasks > 0 && sent == o.maxTasks {
					capped = true
					return
				}
				sent++
			}
			if !yield(t, err) {
				return
			}
		}
	}
	prog := newProgress(stderr, sum.Owned, out.Len(), o.every)
	lost := 0
	var writeErr error
	res, err := client.BatchSeq(context.Background(), tasks, llmdrain.BatchOptions{
		Concurrency: o.concurrency,
		Journal:     o.journal,
		Shard:       shard,
		OnProgress:  prog.update,
		MaxCost:     o.maxCost,
	}, func(r llmdrain.TaskResult) error {
		if r.Resumed {
			// In the journal but not in the output: its answer was lost
			// (a power cut between the two writes).
			lost++
			return nil
		}
		if line, ok := batchfile.ResultOf(r); ok {
			if err := out.Write(line); err != nil {
				writeErr = err
				return err
			}
		}
		return nil
	})
	prog.done()
	stop()
	<-shutdownErr
	<-noticed
	if cerr := out.Close(); cerr != nil && writeErr == nil {
		writeErr = cerr
	}

	if res == nil { // nothing ran: an unusable journal, a bad shard
		if errors.Is(err, llmdrain.ErrJournalLocked) {
			return fail("%s is in use by another llmdrain (one process per shard)", o.journal)
		}
		return fail("%v", err)
	}
	where := ""
	if shard.Count > 0 {
		where = " shard " + shard.String() + ":"
	}
	left := sum.Owned - out.Len() - lost
	cost := ""
	if prices != nil {
		cost = ", cost " + res.Cost.String() + " in this run"
	}
	fmt.Fprintf(stdout, "llmdrain:%s %d of %d requests have a result (%d from earlier runs), %d failed, %d left%s; results in %s\n",
		where, out.Len(), sum.Owned, earlier, out.Failed(), left, cost, o.out)
	switch {
	case writeErr != nil:
		fmt.Fprintf(stderr, "llmdrain: writing %s: %v\n", o.out, writeErr)
		return exitFailed
	case lost > 0:
		fmt.Fprintf(stderr, "llmdrain: %d requests are recorded done in %s but have no result in %s; delete the journal and run again to send them (the output is kept)\n",
			lost, o.journal, o.out)
		return exitFailed
	case left > 0:
		why := "stopped"
		switch {
		case capped && res.NotRun == 0:
			why = "stopped at -max-tasks"
		case errors.Is(err, llmdrain.ErrBudgetExceeded):
			why = fmt.Sprintf("stopped at -max-cost %v (raise it to go on)", o.maxCost)
		}
		fmt.Fprintf(stderr, "llmdrain: %s with %d requests left; run the same command again to resume\n", why, left)
		return exitStopped
	case err != nil:
		fmt.Fprintf(stderr, "llmdrain: %v\n", err)
		return exitFailed
	case out.Failed() > 0:
		return exitFailed
	}
	return exitOK
}

// parseShard reads -shard: "I/N", or "N" with I from index (the value of
// $JOB_COMPLETION_INDEX). With "I/N", a set index must agree.
func parseShard(flagValue, index string) (llmdrain.Shard, error) {
	if flagValue == "" {
		if index != "" {
			return llmdrain.Shard{}, errors.New("$JOB_COMPLETION_INDEX is set but -shard is not: give -shard N, the Job's completions")
		}
		return llmdrain.Shard{}, nil
	}
	bad := fmt.Errorf(`-shard %q: want "INDEX/COUNT" or "COUNT", 0 <= INDEX < COUNT`, flagValue)
	is, ns, hasIndex := strings.Cut(flagValue, "/")
	if !hasIndex {
		is, ns = index, flagValue
		if index == "" {
			return llmdrain.Shard{}, fmt.Errorf(`-shard %q: the index comes from $JOB_COMPLETION_INDEX, which is not set; or give "INDEX/COUNT"`, flagValue)
		}
	}
	i, err1 := strconv.Atoi(is)
	n, err2 := strconv.Atoi(ns)
	if err1 != nil || err2 != nil || n < 1 || i < 0 || i >= n {
		return llmdrain.Shard{}, bad
	}
	if hasIndex && index != "" && index != is {
		return llmdrain.Shard{}, fmt.Errorf("-shard %q disagrees with $JOB_COMPLETION_INDEX=%s", flagValue, index)
	}
	return llmdrain.Shard{Index: i, Count: n}, nil
}

// shardPath names a shard's output: results.jsonl becomes
// results.2-of-4.jsonl.
func shardPath(path string, s llmdrain.Shard) string {
	ext := filepath.Ext(path)
	return fmt.Sprintf("%s.%d-of-%d%s", strings.TrimSuffix(path, ext), s.Index, s.Count, ext)
}

func splitJoined(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// progress shows the batch's progress on stderr: a progress bar on a
// terminal, else a plain line every interval and a last one.
type progress struct {
	w     io.Writer
	bar   *progressbar.ProgressBar // nil when stderr is not a terminal
	every time.Duration
	total int
	base  int // results written in earlier runs

	mu   sync.Mutex
	last time.Time
	line string
}

func newProgress(f *os.File, total, base int, every time.Duration) *progress {
	p := &progress{w: f, every: every, total: total, base: base, last: time.Now()}
	if term.IsTerminal(int(f.Fd())) {
		p.bar = progressbar.NewOptions(total,
			progressbar.OptionSetWriter(f),
			progressbar.OptionSetDescription("llmdrain"),
			progressbar.OptionShowCount(),
			progressbar.OptionShowIts(),
			progressbar.OptionSetItsString("req"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionFullWidth(),
		)
		_ = p.bar.Set(base)
	}
	return p
}

func (p *progress) update(s llmdrain.Progress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	done := p.base + s.Completed - s.Resumed + s.Failed
	if p.bar != nil {
		_ = p.bar.Set(done)
		return
	}
	p.line = fmt.Sprintf("%d/%d done, %d failed, %d in flight, %.1f/s", done, p.total, s.Failed, s.InFlight, s.Rate)
	if s.ETA > 0 {
		p.line += fmt.Sprintf(", ETA %v", s.ETA.Round(time.Second))
	}
	if time.Since(p.last) >= p.every {
		fmt.Fprintln(p.w, p.line)
		p.last = time.Now()
	}
}

func (p *progress) done() {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.bar != nil:
		_ = p.bar.Exit()
		fmt.Fprintln(p.w)
	case p.line != "":
		fmt.Fprintln(p.w, p.line)
	}
}

func merge(args []string, stdout io.Writer, stderr *os.File) int {
	fs := flag.NewFlagSet("llmdrain batch merge", flag.ContinueOnError)
	fs.SetOutput(stderr)
	in := fs.String("in", "", "the input file the shards ran (required): gives the order")
	outPath := fs.String("out", "", "merged output file (required)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: llmdrain batch merge -in REQUESTS.jsonl -out MERGED.jsonl SHARD_RESULTS...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *in == "" || *outPath == "" || fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	for _, f := range fs.Args() {
		if abs(f) == abs(*outPath) {
			fmt.Fprintf(stderr, "llmdrain: -out %s is one of the files to merge\n", *outPath)
			return exitUsage
		}
	}
	input, err := os.Open(*in)
	if err != nil {
		fmt.Fprintln(stderr, "llmdrain:", err)
		return exitUsage
	}
	defer input.Close()
	tmp := *outPath + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		fmt.Fprintln(stderr, "llmdrain:", err)
		return exitUsage
	}
	rep, err := batchfile.Merge(input, fs.Args(), out)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, *outPath)
	}
	if err != nil {
		os.Remove(tmp)
		fmt.Fprintln(stderr, "llmdrain:", err)
		return exitUsage
	}
	fmt.Fprintf(stdout, "llmdrain: merged %d results into %s\n", rep.Written, *outPath)
	if rep.Extra > 0 {
		fmt.Fprintf(stderr, "llmdrain: %d results have a custom_id that is not in %s (not merged)\n", rep.Extra, *in)
	}
	if len(rep.Missing) > 0 {
		fmt.Fprintf(stderr, "llmdrain: %d custom_ids have no result:\n", len(rep.Missing))
		for _, id := range rep.Missing {
			fmt.Fprintf(stderr, "  %s\n", id)
		}
		return exitFailed
	}
	return exitOK
}

func abs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}
