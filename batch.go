package llmdrain

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"golang.org/x/sync/errgroup"

	"github.com/llmdrain/llmdrain/internal/journal"
)

// DefaultBatchConcurrency is how many tasks run at once when
// BatchOptions.Concurrency is 0.
const DefaultBatchConcurrency = 8

// ErrInvalidBatch matches every error Batch returns for bad input, before
// any call is made.
var ErrInvalidBatch = errors.New("llmdrain: invalid batch")

// ErrJournalLocked is returned by Batch when another process is using the
// journal file.
var ErrJournalLocked = errors.New("llmdrain: journal is in use by another process")

// Task is one prompt of a batch.
type Task struct {
	// ID names the task in results and in the journal. Empty means one
	// derived from the task's position and prompt, stable across runs of
	// the same input. IDs must be unique within a batch.
	ID string
	// Prompt is sent as a single user message when Request is nil.
	Prompt string
	// Request, when set, is sent as it is; an empty Model means the
	// client's.
	Request *openai.ChatCompletionRequest
}

// TaskStatus is where a task stands.
type TaskStatus string

// Task statuses. A task ends completed, failed or not run.
const (
	StatusPending   TaskStatus = "pending"
	StatusRunning   TaskStatus = "running"
	StatusCompleted TaskStatus = "completed"
	StatusFailed    TaskStatus = "failed"
	// StatusNotRun marks a task that did not run, or was cancelled while
	// running, because of a shutdown or of the batch's context: it did
	// not fail, and a resumed batch runs it.
	StatusNotRun TaskStatus = "not_run"
)

// TaskResult is what became of one task.
type TaskResult struct {
	ID       string
	Status   TaskStatus
	Text     string        // the first choice's content, when completed
	Err      error         // why it failed or did not run; nil when completed
	Attempts int           // HTTP attempts made, retries included
	Duration time.Duration // from start to end of the task's call
	Usage    openai.Usage
	Resumed  bool // completed in an earlier run, taken from the journal
}

// Progress is a snapshot of a running batch.
type Progress struct {
	Total     int
	Completed int // resumed ones included
	Failed    int
	NotRun    int
	InFlight  int
	Pending   int
	Resumed   int
	Elapsed   time.Duration
	Rate      float64       // tasks finished per second in this run
	ETA       time.Duration // at the current rate; 0 when unknown
	Usage     openai.Usage  // token totals so far
}

// String renders the progress as one terminal line, such as
// "120/200 done, 3 failed, 5 in flight, 12.3/s, ETA 6s, 4821 tokens".
func (p Progress) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d/%d done", p.Completed, p.Total)
	if p.Failed > 0 {
		fmt.Fprintf(&b, ", %d failed", p.Failed)
	}
	if p.NotRun > 0 {
		fmt.Fprintf(&b, ", %d not run", p.NotRun)
	}
	fmt.Fprintf(&b, ", %d in flight, %.1f/s", p.InFlight, p.Rate)
	if p.ETA > 0 {
		fmt.Fprintf(&b, ", ETA %v", p.ETA.Round(time.Second))
	}
	fmt.Fprintf(&b, ", %d tokens", p.Usage.TotalTokens)
	return b.String()
}

// BatchOptions tune a batch. The zero value runs DefaultBatchConcurrency
// tasks at once with no journal and no progress reports.
type BatchOptions struct {
	// Concurrency bounds the tasks running at once. 0 means
	// DefaultBatchConcurrency.
	Concurrency int
	// Journal is the path of a JSON Lines file recording every finished
	// task. A batch run again with the same journal skips the tasks it
	// records as completed and runs the rest. A completion is keyed by the
	// task's ID and its request (model, messages and every other field), and
	// it is final: whatever the journal records later for the same ID, with
	// the same request or another, a task with that ID and that request
	// again takes the recorded answer instead of paying for a new one.
	// Failed and not-run tasks always run again. Empty means no journal.
	Journal string
	// OnProgress, if set, is called after each task ends, one call at a
	// time, and must return quickly. If it panics (or calls
	// runtime.Goexit), it is not called again, no task starts, the
	// running ones are cancelled (they end not run), and once every worker
	// has returned and the journal is closed, Batch panics on the caller's
	// goroutine with an error that holds the value and the stack of the
	// original panic and wraps the value when it is an error.
	OnProgress func(Progress)
}

// BatchResult is the outcome of a batch: one result per task, in input
// order, and totals.
type BatchResult struct {
	Results   []TaskResult
	Completed int // resumed ones included
	Failed    int
	NotRun    int
	Resumed   int
	Usage     openai.Usage // tokens of the tasks completed in this run
	Elapsed   time.Duration
}

// journalRecord is one line of the journal: a finished task.
type journalRecord struct {
	ID          string       `json:"id"`
	Fingerprint string       `json:"fp"`
	Status      TaskStatus   `json:"status"`
	Text        string       `json:"text,omitempty"`
	Error       string       `json:"error,omitempty"`
	Attempts    int          `json:"attempts"`
	DurationMS  int64        `json:"duration_ms"`
	Usage       openai.Usage `json:"usage"`
}

// Batch runs tasks through c at bounded concurrency and returns a result
// per task in input order.
//
// Each task is one chat completion, tracked and retried like any call. A
// task that fails does not stop the others. When c's tracker starts
// draining, no new task starts and the running ones get the drain's time to
// finish; tasks cancelled at the drain's deadline, and those never started,
// end StatusNotRun. Cancelling ctx stops the batch at once: running tasks
// are cancelled and, like the ones not started, end StatusNotRun.
//
// A task whose call failed in a way worth retrying, but whose next attempt
// would have come after the drain's deadline or ctx's, ends StatusNotRun
// too, not StatusFailed: it was stopped by the deadline, and a resumed batch
// runs it. Its error matches ErrDraining or context.DeadlineExceeded
// respectively, as well as the call's own error (such as the server's
// *openai.APIError).
//
// Batch returns an error wrapping ErrInvalidBatch for bad input (duplicate
// IDs, a task with neither prompt nor messages) and for a journal it cannot
// use (unreadable, not a journal: the file is left untouched), before any
// call; ErrJournalLocked when another process holds the journal. When tasks
// ended not run it returns the result and an error wrapping ErrDraining,
// the context's cause, or context.DeadlineExceeded when only ctx's deadline
// cut tasks short. An empty task list returns an empty result.
//
// With a journal, every finished task is appended as it ends and the file
// is synced in batches and before Batch returns.
func (c *Client) Batch(ctx context.Context, tasks []Task, opts BatchOptions) (*BatchResult, error) {
	start := time.Now()
	res := &BatchResult{Results: make([]TaskResult, len(tasks))}
	if len(tasks) == 0 {
		return res, nil
	}
	reqs, fps, err := c.prepareTasks(tasks, res.Results)
	if err != nil {
		return nil, err
	}

	var j *journal.Journal
	if opts.Journal != "" {
		var done map[taskKey]journalRecord
		j, done, err = openJournal(opts.Journal)
		if err != nil {
			return nil, err
		}
		for i := range res.Results {
			r := &res.Results[i]
			if rec, ok := done[taskKey{r.ID, fps[i]}]; ok {
				*r = TaskResult{ID: r.ID, Status: StatusCompleted, Text: rec.Text, Attempts: rec.Attempts,
					Duration: time.Duration(rec.DurationMS) * time.Millisecond, Usage: rec.Usage, Resumed: true}
			}
		}
	}

	// Workers run under rctx, so that a panic in OnProgress can cancel them.
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	b := &batchRun{c: c, res: res, journal: j, onProgress: opts.OnProgress, start: start, cancel: cancel}
	for _, r := range res.Results {
		if r.Resumed {
			b.p.Resumed++
			b.p.Completed++
		}
	}
	b.p.Total = len(tasks)
	b.p.Pending = len(tasks) - b.p.Completed

	limit := opts.Concurrency
	if limit <= 0 {
		limit = DefaultBatchConcurrency
	}
	var g errgroup.Group
	g.SetLimit(limit)
	// Whichever way Batch is left, its workers are waited for and its
	// journal is closed, unlocking it. That is done below; this covers
	// leaving early, which only a runtime.Goexit from OnProgress on this
	// goroutine does.
	cleanedUp := false
	var closeErr error
	defer func() {
		if !cleanedUp {
			cancel(errProgressPanicked)
			_ = g.Wait()
			if j != nil {
				j.Close()
			}
		}
	}()
	for i := range tasks {
		if res.Results[i].Status != StatusPending {
			continue
		}
		if b.stopped(rctx) {
			b.notRun(i, b.stopCause(rctx))
			continue
		}
		g.Go(func() error {
			b.run(rctx, i, reqs[i], fps[i])
			return nil
		})
	}
	_ = g.Wait()
	if j != nil {
		closeErr = j.Close()
	}
	cleanedUp = true
	if b.panicked != nil { // no worker is left to write it
		panic(b.panicked)
	}

	for _, r := range res.Results {
		switch r.Status {
		case StatusCompleted:
			res.Completed++
			if r.Resumed {
				res.Resumed++
			} else {
				addUsage(&res.Usage, r.Usage)
			}
		case StatusFailed:
			res.Failed++
		case StatusNotRun:
			res.NotRun++
		}
	}
	res.Elapsed = time.Since(start)

	var errs []error
	if closeErr != nil {
		errs = append(errs, fmt.Errorf("llmdrain: journal %s: %w", opts.Journal, closeErr))
	}
	if res.NotRun > 0 {
		errs = append(errs, fmt.Errorf("llmdrain: batch interrupted, %d of %d tasks not run: %w", res.NotRun, len(tasks), b.stopCause(ctx)))
	}
	return res, errors.Join(errs...)
}

// prepareTasks validates tasks, fills in their IDs and pending results, and
// returns each task's request and fingerprint.
func (c *Client) prepareTasks(tasks []Task, results []TaskResult) ([]openai.ChatCompletionRequest, []string, error) {
	reqs := make([]openai.ChatCompletionRequest, len(tasks))
	fps := make([]string, len(tasks))
	seen := make(map[string]int, len(tasks))
	for i, t := range tasks {
		switch {
		case t.Request != nil:
			reqs[i] = *t.Request
		case t.Prompt != "":
			reqs[i] = openai.ChatCompletionRequest{Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: t.Prompt}}}
		default:
			return nil, nil, fmt.Errorf("%w: task %d has neither a prompt nor a request", ErrInvalidBatch, i)
		}
		if len(reqs[i].Messages) == 0 {
			return nil, nil, fmt.Errorf("%w: task %d has a request without messages", ErrInvalidBatch, i)
		}
		if reqs[i].Model == "" {
			reqs[i].Model = c.model
		}
		reqs[i].Stream = false
		body, err := json.Marshal(reqs[i])
		if err != nil {
			return nil, nil, fmt.Errorf("%w: task %d: %w", ErrInvalidBatch, i, err)
		}
		sum := sha256.Sum256(body)
		fps[i] = hex.EncodeToString(sum[:16])
		id := t.ID
		if id == "" {
			id = fmt.Sprintf("%d-%s", i, fps[i][:12])
		}
		if prev, dup := seen[id]; dup {
			return nil, nil, fmt.Errorf("%w: duplicate task ID %q at positions %d and %d", ErrInvalidBatch, id, prev, i)
		}
		seen[id] = i
		results[i] = TaskResult{ID: id, Status: StatusPending}
	}
	return reqs, fps, nil
}

// taskKey names a request in the journal: a task's ID and its request's
// fingerprint.
type taskKey struct{ id, fp string }

// openJournal opens the journal and returns the completed record of every
// request that completed, the last one if it completed more than once.
// A completion is final: records of other outcomes never erase it, not
// even for the same ID and request. An answer in the journal was paid for,
// and a failure of the same request (which a run using the journal never
// makes, as it takes the answer instead) says nothing against that answer.
func openJournal(path string) (*journal.Journal, map[taskKey]journalRecord, error) {
	j, raws, err := journal.Open(path)
	switch {
	case errors.Is(err, journal.ErrLocked):
		return nil, nil, fmt.Errorf("%w: %s", ErrJournalLocked, path)
	case err != nil:
		return nil, nil, fmt.Errorf("%w: journal: %w", ErrInvalidBatch, err)
	}
	done := make(map[taskKey]journalRecord)
	for n, raw := range raws {
		var rec journalRecord
		if err := json.Unmarshal(raw, &rec); err != nil || rec.ID == "" {
			j.Close()
			return nil, nil, fmt.Errorf("%w: journal %s: record %d is not a task record", ErrInvalidBatch, path, n+1)
		}
		if rec.Status == StatusCompleted {
			done[taskKey{rec.ID, rec.Fingerprint}] = rec
		}
	}
	return j, done, nil
}

// batchRun is the shared state of one Batch call.
type batchRun struct {
	c          *Client
	res        *BatchResult
	journal    *journal.Journal
	onProgress func(Progress)
	start      time.Time
	cancel     context.CancelCauseFunc // of the workers' context

	mu         sync.Mutex // guards p, res.Results entries once running, journalErr, cutCause, panicked
	p          Progress
	finished   int // tasks ended in this run
	journalErr error
	cutCause   error          // of the first task a deadline cut short
	panicked   *progressPanic // set when OnProgress panicked
}

// stopped reports whether new tasks must not start.
func (b *batchRun) stopped(ctx context.Context) bool {
	b.mu.Lock()
	stop := b.journalErr != nil || b.panicked != nil
	b.mu.Unlock()
	return stop || ctx.Err() != nil || b.c.tracker.Draining()
}

// stopCause says why tasks did not run: the batch's context, a journal
// failure, a drain or, when none of those stopped the batch, the deadline
// that cut a task's retries short.
func (b *batchRun) stopCause(ctx context.Context) error {
	if err := context.Cause(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.journalErr != nil:
		return b.journalErr
	case b.cutCause != nil && !b.c.tracker.Draining():
		return b.cutCause
	}
	return ErrDraining
}

// run performs task i, unless the batch stopped while it waited for a slot.
func (b *batchRun) run(ctx context.Context, i int, req openai.ChatCompletionRequest, fp string) {
	if b.stopped(ctx) {
		b.notRun(i, b.stopCause(ctx))
		return
	}
	b.mu.Lock()
	b.res.Results[i].Status = StatusRunning
	b.p.Pending--
	b.p.InFlight++
	b.mu.Unlock()

	cctx, rec := withCallRecord(ctx)
	t0 := time.Now()
	resp, err := b.c.CreateChatCompletion(cctx, req)
	r := TaskResult{ID: b.res.Results[i].ID, Attempts: int(rec.attempts.Load()), Duration: time.Since(t0)}
	var cut *cutShortError
	switch {
	case err == nil && len(resp.Choices) == 0:
		r.Status, r.Err = StatusFailed, ErrEmptyResponse
	case err == nil:
		r.Status, r.Text, r.Usage = StatusCompleted, resp.Choices[0].Message.Content, resp.Usage
	case errors.Is(err, ErrDraining), errors.Is(err, ErrForcedShutdown), ctx.Err() != nil:
		r.Status, r.Err = StatusNotRun, err
	case rec.cut.Load() == deadlineDrain:
		cut = &cutShortError{Cause: ErrDraining, whose: "the drain's", Err: err}
		r.Status, r.Err = StatusNotRun, cut
	case rec.cut.Load() == deadlineCaller:
		cut = &cutShortError{Cause: context.DeadlineExceeded, whose: "the batch's", Err: err}
		r.Status, r.Err = StatusNotRun, cut
	default:
		r.Status, r.Err = StatusFailed, err
	}

	var jerr error
	if b.journal != nil && r.Status != StatusNotRun {
		rec := journalRecord{ID: r.ID, Fingerprint: fp, Status: r.Status, Text: r.Text, Attempts: r.Attempts,
			DurationMS: r.Duration.Milliseconds(), Usage: r.Usage}
		if r.Err != nil {
			rec.Error = r.Err.Error()
		}
		jerr = b.journal.Append(rec)
	}

	b.mu.Lock()
	defer b.mu.Unlock() // deferred: OnProgress may call runtime.Goexit
	b.p.InFlight--
	if jerr != nil && b.journalErr == nil {
		b.journalErr = fmt.Errorf("journal write failed, stopping: %w", jerr)
	}
	if cut != nil && b.cutCause == nil {
		b.cutCause = cut.Cause
	}
	b.finishLocked(i, r)
}

// notRun records task i as not run without starting it.
func (b *batchRun) notRun(i int, cause error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.p.Pending--
	b.finishLocked(i, TaskResult{ID: b.res.Results[i].ID, Status: StatusNotRun, Err: cause})
}

// finishLocked stores a task's result and reports progress. b.mu is held,
// which also serialises the OnProgress calls.
func (b *batchRun) finishLocked(i int, r TaskResult) {
	b.res.Results[i] = r
	switch r.Status {
	case StatusCompleted:
		b.p.Completed++
		addUsage(&b.p.Usage, r.Usage)
	case StatusFailed:
		b.p.Failed++
	case StatusNotRun:
		b.p.NotRun++
	}
	if r.Status != StatusNotRun {
		b.finished++
	}
	if b.onProgress == nil || b.panicked != nil {
		return
	}
	p := b.p
	p.Elapsed = time.Since(b.start)
	if secs := p.Elapsed.Seconds(); secs > 0 {
		p.Rate = float64(b.finished) / secs
	}
	if left := p.Pending + p.InFlight; p.Rate > 0 && left > 0 {
		p.ETA = time.Duration(float64(left) / p.Rate * float64(time.Second))
	}
	b.report(p)
}

// report calls OnProgress; b.mu is held. A panic there must not crash the
// process from a worker goroutine, nor leave the journal locked and the
// workers running when it happens on Batch's own: it is recovered and
// recorded, the workers are cancelled, and Batch panics with it once
// everything is cleaned up. A runtime.Goexit is recorded the same way, and
// goes on unwinding its goroutine.
func (b *batchRun) report(p Progress) {
	returned := false
	defer func() {
		if returned {
			return
		}
		v := recover()
		b.panicked = &progressPanic{value: v, goexit: v == nil, stack: debug.Stack()}
		b.cancel(errProgressPanicked)
	}()
	b.onProgress(p)
	returned = true
}

// errProgressPanicked is the cause of the tasks cancelled because
// OnProgress panicked.
var errProgressPanicked = errors.New("llmdrain: batch stopped, OnProgress panicked")

// progressPanic is what Batch panics with after OnProgress panicked: the
// original value and the stack where it was recovered, which names the
// OnProgress frame that panicked.
type progressPanic struct {
	value  any
	goexit bool // OnProgress called runtime.Goexit rather than panicking
	stack  []byte
}

func (p *progressPanic) Error() string {
	if p.goexit {
		return fmt.Sprintf("llmdrain: BatchOptions.OnProgress called runtime.Goexit\n\n%s", p.stack)
	}
	return fmt.Sprintf("llmdrain: BatchOptions.OnProgress panicked: %v\n\n%s", p.value, p.stack)
}

// Unwrap returns the panic's value when it is an error.
func (p *progressPanic) Unwrap() error {
	err, _ := p.value.(error)
	return err
}

// cutShortError is the error of a task whose call failed in a way worth
// retrying, but whose next attempt would have come after a deadline: the
// task did not fail, a deadline stopped it.
type cutShortError struct {
	Cause error  // ErrDraining or context.DeadlineExceeded
	whose string // "the drain's" or "the batch's"
	Err   error  // the call's error
}

func (e *cutShortError) Error() string {
	return fmt.Sprintf("llmdrain: task not run to its end, the next attempt would pass %s deadline: %v", e.whose, e.Err)
}

// Unwrap returns the cause and the call's error, so that errors.Is and
// errors.As find either.
func (e *cutShortError) Unwrap() []error { return []error{e.Cause, e.Err} }

func addUsage(dst *openai.Usage, u openai.Usage) {
	dst.PromptTokens += u.PromptTokens
	dst.CompletionTokens += u.CompletionTokens
	dst.TotalTokens += u.TotalTokens
}
