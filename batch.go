package llmdrain

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"iter"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"golang.org/x/sync/errgroup"

	"github.com/llmdrain/llmdrain/internal/budget"
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
	// Embeddings, when set, makes the task an embeddings call, sent as it
	// is; Prompt and Request must then be empty, and its Model set (no
	// default model applies to embeddings).
	Embeddings *openai.EmbeddingRequest
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
	// StatusSkipped marks a task of another shard (BatchOptions.Shard):
	// it is another process's to run.
	StatusSkipped TaskStatus = "skipped"
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
	// Cost is what the task's answer cost, priced by Config.Prices; for a
	// resumed task, what it cost when it ran. Zero when no answer was
	// paid for (it failed with the server's error, or did not run);
	// Unknown when its model has no price or it reported no usage.
	Cost    Cost
	Resumed bool // completed in an earlier run, taken from the journal
	// Response is the whole answer of a chat task that got one in this run
	// (completed, or failed with ErrEmptyResponse); nil otherwise.
	Response *openai.ChatCompletionResponse
	// Embeddings is the answer of a completed embeddings task in this run;
	// nil otherwise.
	Embeddings *openai.EmbeddingResponse
}

// Progress is a snapshot of a running batch.
type Progress struct {
	// Total counts the tasks of the batch (of its shard, with
	// BatchOptions.Shard); for BatchSeq, the tasks read so far.
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
	Cost      Cost          // of the answers paid for in this run so far
}

// String renders the progress as one terminal line, such as
// "120/200 done, 3 failed, 5 in flight, 12.3/s, ETA 6s, 4821 tokens, $0.0386"
// (the cost once some is known).
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
	if p.Cost.USD > 0 {
		fmt.Fprintf(&b, ", $%.4f", p.Cost.USD)
	}
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
	// Shard, when its Count is not 0, runs only the tasks this shard owns
	// (see Shard.Owns); the others are another process's. The zero value
	// runs every task.
	Shard Shard
	// MaxCost caps, in US dollars, what the batch's answers may cost, in
	// this run and, with a Journal, in the earlier runs it records (a
	// shard's journal records its shard's). Before a task starts, its
	// worst case is reserved: its request's JSON body in bytes (which
	// bounds its prompt's tokens, images and audio aside) at the input
	// price, plus its max_completion_tokens (else max_tokens, else the
	// model's Price.MaxOutput) times n at the output price, at the
	// dearest of its model and the fallback targets' (Target.Model). When
	// its answer comes, the reservation is replaced by what the usage it
	// reports costs. A task that could pass the cap waits while others
	// run, whose real cost may leave room; when it cannot fit, or its
	// cost cannot be bounded (a model without a price, a request without
	// an output bound), it ends StatusNotRun with an error matching
	// ErrBudgetExceeded, and no later task starts: the batch stops there,
	// and run again with a larger cap and the same journal it goes on
	// from there. So, however many tasks run at once, what the answers
	// cost never passes the cap, as far as the reservations bound them. A
	// failed call costs nothing here, as the API bills no error. 0 means no
	// cap; a cap needs Config.Prices. Config.MaxCost, if set, applies too,
	// and a task waits for room in it the same way. A task refused by
	// this cap is never sent, so Hooks get no CallStart or CallDone for it.
	MaxCost float64
}

// Shard names one of Count disjoint shares of a batch, so that Count
// processes (the pods of a Kubernetes Indexed Job, say) can run one batch
// between them, each with its own journal. A task belongs to the shard its
// ID hashes to, whatever the order or number of the other tasks: inserting,
// removing or reordering lines moves no task to another shard. (A derived
// ID, of a task without one, depends on its position: give IDs to tasks
// that are sharded.)
type Shard struct {
	Index int // 0 <= Index < Count
	Count int // 0 means no sharding
}

// Owns reports whether the task with this ID is the shard's: FNV-1a (64
// bits) of the ID, modulo Count, is Index. The zero Shard owns every task.
func (s Shard) Owns(id string) bool {
	if s.Count <= 1 {
		return true
	}
	h := fnv.New64a()
	h.Write([]byte(id))
	return h.Sum64()%uint64(s.Count) == uint64(s.Index)
}

// String renders the shard as "INDEX/COUNT", or "" for the zero Shard.
func (s Shard) String() string {
	if s.Count == 0 {
		return ""
	}
	return fmt.Sprintf("%d/%d", s.Index, s.Count)
}

func (s Shard) validate() error {
	if s.Count < 0 || s.Index < 0 || (s.Count == 0 && s.Index != 0) || (s.Count > 0 && s.Index >= s.Count) {
		return fmt.Errorf("%w: shard %d/%d: want 0 <= index < count", ErrInvalidBatch, s.Index, s.Count)
	}
	return nil
}

// BatchResult is the outcome of a batch: one result per task, in input
// order, and totals.
type BatchResult struct {
	// Results holds one result per task, in input order; nil for BatchSeq,
	// which hands each result over as the task ends.
	Results   []TaskResult
	Completed int // resumed ones included
	Failed    int
	NotRun    int
	Resumed   int
	Skipped   int          // tasks of other shards (BatchOptions.Shard)
	Usage     openai.Usage // tokens of the tasks completed in this run
	// Cost is what the answers paid for in this run cost: USD sums the
	// known costs, Unknown says some were not known (see TaskResult.Cost).
	Cost    Cost
	Elapsed time.Duration
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
	// Cost is what the budget counted, in picodollars: the answer's
	// cost, or its reservation when its cost was unknown.
	Cost        int64 `json:"cost_pusd,omitempty"`
	CostUnknown bool  `json:"cost_unknown,omitempty"`
}

// Batch runs tasks through c at bounded concurrency and returns a result
// per task in input order.
//
// Each task is one chat completion (or, with Task.Embeddings, one
// embeddings call), tracked and retried like any call. A
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
// With opts.Shard set, the tasks of other shards are not run: they end
// StatusSkipped and count in BatchResult.Skipped only.
//
// Batch returns an error wrapping ErrInvalidBatch for bad input (duplicate
// IDs, a task with neither prompt nor messages, a bad shard) and for a
// journal it cannot use (unreadable, not a journal: the file is left
// untouched), before any call; ErrJournalLocked when another process holds
// the journal. When tasks ended not run it returns the result and an error
// wrapping ErrDraining, the context's cause, or context.DeadlineExceeded
// when only ctx's deadline cut tasks short. An empty task list returns an
// empty result.
//
// With a journal, every finished task is appended as it ends and the file
// is synced in batches and before Batch returns. Batch is a wrapper of
// BatchSeq's runner that keeps every task and result in memory; see
// BatchSeq for inputs too large for that.
func (c *Client) Batch(ctx context.Context, tasks []Task, opts BatchOptions) (*BatchResult, error) {
	start := time.Now()
	res := &BatchResult{Results: make([]TaskResult, len(tasks))}
	if len(tasks) == 0 {
		return res, nil
	}
	if err := opts.Shard.validate(); err != nil {
		return nil, err
	}
	if err := c.checkMaxCost(opts.MaxCost); err != nil {
		return nil, err
	}
	preps := make([]prepared, len(tasks))
	seen := make(map[string]int, len(tasks))
	for i, t := range tasks {
		p, err := c.prepareTask(i, t)
		if err != nil {
			return nil, err
		}
		if prev, dup := seen[p.id]; dup {
			return nil, fmt.Errorf("%w: duplicate task ID %q at positions %d and %d", ErrInvalidBatch, p.id, prev, i)
		}
		seen[p.id] = i
		preps[i] = p
		res.Results[i] = TaskResult{ID: p.id, Status: StatusPending}
	}

	b := &batchRun{c: c, results: res.Results, onProgress: opts.OnProgress, start: start, keepText: true}
	b.deliver = func(i int, r TaskResult) error { res.Results[i] = r; return nil }
	if opts.Journal != "" {
		if err := b.openJournal(opts.Journal); err != nil {
			return nil, err
		}
	}
	b.newBudget(opts.MaxCost)
	for i, p := range preps {
		r := &res.Results[i]
		if !opts.Shard.Owns(p.id) {
			r.Status = StatusSkipped
			continue
		}
		b.p.Total++
		if rec, ok := b.done[doneKey(p.id, p.fp)]; ok {
			*r = TaskResult{ID: r.ID, Status: StatusCompleted, Text: rec.Text, Attempts: rec.Attempts,
				Duration: time.Duration(rec.DurationMS) * time.Millisecond, Usage: rec.Usage, Resumed: true,
				Cost: journaledCost(rec)}
			b.p.Resumed++
			b.p.Completed++
		}
	}
	b.done = nil
	b.p.Pending = b.p.Total - b.p.Completed

	pending := func(yield func(int, prepared) bool) {
		for i := range preps {
			if res.Results[i].Status == StatusPending && !yield(i, preps[i]) {
				return
			}
		}
	}
	closeErr := b.execute(ctx, pending, opts.Concurrency)

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
		case StatusSkipped:
			res.Skipped++
		}
	}
	res.Cost = b.p.Cost
	res.Elapsed = time.Since(start)
	return res, b.errors(ctx, opts.Journal, closeErr, res.NotRun, len(tasks)-res.Skipped)
}

// BatchSeq is Batch for inputs too large to hold in memory: it reads tasks
// from an iterator, only as fast as they start, and hands each task's
// result to emit as the task ends, keeping neither. Memory is bounded by
// the concurrency, plus a few dozen bytes per task for the duplicate check
// and the journal's index.
//
// Tasks run as with Batch: the same retries, drain, cancellation,
// journal, shards and progress reports (whose Total counts the tasks read
// so far). emit is called once for each task read that the shard owns:
// completed, failed, not run, or resumed from the journal (completed, with
// Resumed set but no Text nor Response: the journal of BatchSeq keeps no
// answers; emit is where to keep them). It is called one call at a time,
// before the task is recorded in the journal, so that an answer emit
// stored (in a file, say) is never journaled without it. If emit returns
// an error, the task is not journaled (a resumed batch runs it again), no
// task starts, and the running ones end as they would in a drain; the
// error is returned. A nil emit discards the results.
//
// The iterator's error, a task that is not valid, or a duplicate ID ends
// the batch the same way, with an error wrapping ErrInvalidBatch: unlike
// Batch, which checks every task first, BatchSeq cannot know of a bad task
// before it has read the tasks before it. Check the input first when
// nothing may be paid for before a bad task is found (the batchfile
// package does).
//
// Once the batch stops, by a drain, ctx or an error, no more tasks are
// read: NotRun counts the tasks read that did not run, and the returned
// error says why, as Batch's does. The result's Results is nil.
func (c *Client) BatchSeq(ctx context.Context, tasks iter.Seq2[Task, error], opts BatchOptions, emit func(TaskResult) error) (*BatchResult, error) {
	start := time.Now()
	if err := opts.Shard.validate(); err != nil {
		return nil, err
	}
	if err := c.checkMaxCost(opts.MaxCost); err != nil {
		return nil, err
	}
	if emit == nil {
		emit = func(TaskResult) error { return nil }
	}
	b := &batchRun{c: c, onProgress: opts.OnProgress, start: start, stream: true}
	b.deliver = func(_ int, r TaskResult) error { return emit(r) }
	if opts.Journal != "" {
		if err := b.openJournal(opts.Journal); err != nil {
			return nil, err
		}
	}
	b.newBudget(opts.MaxCost)
	res := &BatchResult{}
	seen := make(map[[16]byte]int) // the IDs read, hashed
	var inputErr error
	input := func(yield func(int, prepared) bool) {
		i := 0
		for t, err := range tasks {
			if err != nil {
				inputErr = fmt.Errorf("%w: task %d: %w", ErrInvalidBatch, i, err)
				return
			}
			p, err := c.prepareTask(i, t)
			if err != nil {
				inputErr = err
				return
			}
			h := idKey(p.id)
			if prev, dup := seen[h]; dup {
				inputErr = fmt.Errorf("%w: duplicate task ID %q at positions %d and %d", ErrInvalidBatch, p.id, prev, i)
				return
			}
			seen[h] = i
			i++
			if !opts.Shard.Owns(p.id) {
				res.Skipped++
				continue
			}
			if b.resumed(p) {
				if b.stopped(ctx) {
					return
				}
				continue
			}
			b.mu.Lock()
			b.p.Total++
			b.p.Pending++
			b.mu.Unlock()
			if !yield(i-1, p) {
				return
			}
		}
	}
	closeErr := b.execute(ctx, input, opts.Concurrency)

	res.Completed, res.Failed, res.NotRun, res.Resumed = b.p.Completed, b.p.Failed, b.p.NotRun, b.p.Resumed
	res.Usage, res.Cost = b.p.Usage, b.p.Cost
	res.Elapsed = time.Since(start)
	err := b.errors(ctx, opts.Journal, closeErr, res.NotRun, b.p.Total)
	return res, errors.Join(err, inputErr)
}

// prepared is a validated task: its ID, fingerprint and request.
type prepared struct {
	id, fp string
	chat   *openai.ChatCompletionRequest
	emb    *openai.EmbeddingRequest
	size   int // of the request's JSON body
}

// prepareTask validates task i and returns it with its ID and fingerprint.
func (c *Client) prepareTask(i int, t Task) (prepared, error) {
	var p prepared
	var body []byte
	var err error
	switch {
	case t.Embeddings != nil:
		if t.Request != nil || t.Prompt != "" {
			return p, fmt.Errorf("%w: task %d has embeddings and a chat prompt or request", ErrInvalidBatch, i)
		}
		if t.Embeddings.Model == "" {
			return p, fmt.Errorf("%w: task %d has an embeddings request without a model", ErrInvalidBatch, i)
		}
		if t.Embeddings.Input == nil {
			return p, fmt.Errorf("%w: task %d has an embeddings request without input", ErrInvalidBatch, i)
		}
		req := *t.Embeddings
		p.emb = &req
		body, err = json.Marshal(req)
		p.size = len(body)
		// Another kind of request than a chat's: another fingerprint space.
		body = append([]byte("embeddings\x00"), body...)
	default:
		var req openai.ChatCompletionRequest
		switch {
		case t.Request != nil:
			req = *t.Request
		case t.Prompt != "":
			req = openai.ChatCompletionRequest{Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: t.Prompt}}}
		default:
			return p, fmt.Errorf("%w: task %d has neither a prompt nor a request", ErrInvalidBatch, i)
		}
		if len(req.Messages) == 0 {
			return p, fmt.Errorf("%w: task %d has a request without messages", ErrInvalidBatch, i)
		}
		if req.Model == "" {
			req.Model = c.model
		}
		req.Stream = false
		p.chat = &req
		body, err = json.Marshal(req)
		p.size = len(body)
	}
	if err != nil {
		return p, fmt.Errorf("%w: task %d: %w", ErrInvalidBatch, i, err)
	}
	sum := sha256.Sum256(body)
	p.fp = hex.EncodeToString(sum[:16])
	p.id = t.ID
	if p.id == "" {
		p.id = fmt.Sprintf("%d-%s", i, p.fp[:12])
	}
	return p, nil
}

// doneKey names a request in the journal: a hash of the task's ID and its
// request's fingerprint, 16 bytes whatever the ID's length.
func doneKey(id, fp string) [16]byte {
	h := sha256.New()
	h.Write([]byte(id))
	h.Write([]byte{0})
	h.Write([]byte(fp))
	var k [16]byte
	copy(k[:], h.Sum(nil))
	return k
}

// idKey is the hash of a task ID that BatchSeq's duplicate check keeps.
func idKey(id string) [16]byte {
	sum := sha256.Sum256([]byte(id))
	var k [16]byte
	copy(k[:], sum[:])
	return k
}

// openJournal opens the journal and indexes every request that completed,
// with its last completed record (keys only, for a stream). A completion
// is final: records of other outcomes never erase it, not even for the
// same ID and request. An answer in the journal was paid for, and a
// failure of the same request (which a run using the journal never makes,
// as it takes the answer instead) says nothing against that answer.
func (b *batchRun) openJournal(path string) error {
	b.done = make(map[[16]byte]journalRecord)
	n := 0
	j, err := journal.OpenEach(path, func(raw []byte) error {
		n++
		var rec journalRecord
		if err := json.Unmarshal(raw, &rec); err != nil || rec.ID == "" {
			return fmt.Errorf("%w: journal %s: record %d is not a task record", ErrInvalidBatch, path, n)
		}
		b.earlier += pico(rec.Cost) // every record's answer was paid for once
		if rec.Status == StatusCompleted {
			k := doneKey(rec.ID, rec.Fingerprint)
			if b.stream {
				rec = journalRecord{} // the key is all a stream needs
			} else {
				rec.ID, rec.Fingerprint, rec.Error = "", "", ""
			}
			b.done[k] = rec
		}
		return nil
	})
	switch {
	case errors.Is(err, ErrInvalidBatch):
		b.done, b.earlier = nil, 0
		return err
	case errors.Is(err, journal.ErrLocked):
		b.done = nil
		return fmt.Errorf("%w: %s", ErrJournalLocked, path)
	case err != nil:
		b.done = nil
		return fmt.Errorf("%w: journal: %w", ErrInvalidBatch, err)
	}
	b.journal = j
	return nil
}

// batchRun is the shared state of one Batch or BatchSeq call.
type batchRun struct {
	c          *Client
	results    []TaskResult // Batch's, for the running status; nil for a stream
	deliver    func(i int, r TaskResult) error
	journal    *journal.Journal
	done       map[[16]byte]journalRecord // completed requests in the journal, by doneKey
	keepText   bool                       // journal the answers' text (Batch's resume returns it)
	stream     bool                       // BatchSeq: stop reading input once stopped
	onProgress func(Progress)
	start      time.Time
	cancel     context.CancelCauseFunc // of the workers' context
	budget     *budget.Budget          // BatchOptions.MaxCost; nil: no cap
	earlier    pico                    // what the journal's earlier runs spent
	spent      pico                    // what this run's answers cost; guarded by mu

	mu         sync.Mutex // guards p, results entries once running, journalErr, sinkErr, cutCause, panicked, deliver calls
	p          Progress
	finished   int // tasks ended in this run
	journalErr error
	sinkErr    error          // emit's first error
	budgetErr  error          // why the first task refused by the budget was
	cutCause   error          // of the first task a deadline cut short
	panicked   *progressPanic // set when OnProgress panicked
}

// execute runs the tasks at bounded concurrency and closes the journal. A
// task is read from tasks only once a slot is free for it. When the batch
// stops, Batch's remaining tasks end not run; a stream's are not read.
func (b *batchRun) execute(ctx context.Context, tasks iter.Seq2[int, prepared], limit int) (closeErr error) {
	// Workers run under rctx, so that a panic in OnProgress can cancel them.
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	b.cancel = cancel
	if limit <= 0 {
		limit = DefaultBatchConcurrency
	}
	var g errgroup.Group
	g.SetLimit(limit)
	// Whichever way this is left, the workers are waited for and the
	// journal is closed, unlocking it. That is done below; this covers
	// leaving early, which only a runtime.Goexit from OnProgress on this
	// goroutine does.
	cleanedUp := false
	defer func() {
		if !cleanedUp {
			cancel(errProgressPanicked)
			_ = g.Wait()
			if b.journal != nil {
				b.journal.Close()
			}
		}
	}()
	for i, p := range tasks {
		if b.stopped(rctx) {
			b.notRun(i, p.id, b.stopCause(rctx))
			if b.stream {
				break
			}
			continue
		}
		g.Go(func() error {
			b.run(rctx, i, p)
			return nil
		})
	}
	_ = g.Wait()
	if b.journal != nil {
		closeErr = b.journal.Close()
	}
	cleanedUp = true
	if b.panicked != nil { // no worker is left to write it
		panic(b.panicked)
	}
	return closeErr
}

// errors is what a batch returns besides its result.
func (b *batchRun) errors(ctx context.Context, path string, closeErr error, notRun, total int) error {
	var errs []error
	if closeErr != nil {
		errs = append(errs, fmt.Errorf("llmdrain: journal %s: %w", path, closeErr))
	}
	if notRun > 0 {
		errs = append(errs, fmt.Errorf("llmdrain: batch interrupted, %d of %d tasks not run: %w", notRun, total, b.stopCause(ctx)))
	} else if b.sinkErr != nil {
		errs = append(errs, b.sinkErr)
	}
	return errors.Join(errs...)
}

// resumed hands over a stream's task that the journal records as
// completed, and reports whether it did.
func (b *batchRun) resumed(p prepared) bool {
	if _, ok := b.done[doneKey(p.id, p.fp)]; !ok {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock() // deferred: OnProgress may call runtime.Goexit
	b.p.Total++
	b.p.Resumed++
	b.finishLocked(0, TaskResult{ID: p.id, Status: StatusCompleted, Resumed: true})
	b.report()
	return true
}

// stopped reports whether new tasks must not start.
func (b *batchRun) stopped(ctx context.Context) bool {
	b.mu.Lock()
	stop := b.journalErr != nil || b.sinkErr != nil || b.budgetErr != nil || b.panicked != nil
	b.mu.Unlock()
	return stop || ctx.Err() != nil || b.c.tracker.Draining()
}

// stopCause says why tasks did not run: the batch's context, a journal or
// emit failure, a drain or, when none of those stopped the batch, the
// deadline that cut a task's retries short.
func (b *batchRun) stopCause(ctx context.Context) error {
	if err := context.Cause(ctx); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.journalErr != nil:
		return b.journalErr
	case b.sinkErr != nil:
		return b.sinkErr
	case b.budgetErr != nil:
		return b.budgetErr
	case b.cutCause != nil && !b.c.tracker.Draining():
		return b.cutCause
	}
	return ErrDraining
}

// run performs task i, unless the batch stopped while it waited for a slot.
func (b *batchRun) run(ctx context.Context, i int, p prepared) {
	if b.stopped(ctx) {
		b.notRun(i, p.id, b.stopCause(ctx))
		return
	}
	reserved, err := b.reserve(ctx, p)
	if err != nil {
		b.notRun(i, p.id, err)
		return
	}
	b.mu.Lock()
	if b.results != nil {
		b.results[i].Status = StatusRunning
	}
	b.p.Pending--
	b.p.InFlight++
	b.mu.Unlock()

	cctx, rec := withCallRecord(ctx)
	rec.reserved = b.c.cost.budget != nil
	t0 := time.Now()
	r := TaskResult{ID: p.id}
	var spent pico // what the answer cost, as the budget counts it
	if p.emb != nil {
		var resp openai.EmbeddingResponse
		resp, err = b.c.oa.CreateEmbeddings(cctx, *p.emb)
		if err == nil {
			r.Status, r.Usage, r.Embeddings = StatusCompleted, resp.Usage, &resp
			spent = b.price(&r, string(resp.Model), string(p.emb.Model), reserved)
		}
	} else {
		var resp openai.ChatCompletionResponse
		resp, err = b.c.CreateChatCompletion(cctx, *p.chat)
		switch {
		case err == nil && len(resp.Choices) == 0:
			r.Status, r.Err, r.Response = StatusFailed, ErrEmptyResponse, &resp
		case err == nil:
			r.Status, r.Text, r.Usage, r.Response = StatusCompleted, resp.Choices[0].Message.Content, resp.Usage, &resp
		}
		if err == nil {
			spent = b.price(&r, resp.Model, p.chat.Model, reserved)
		}
	}
	b.budget.Settle(int64(reserved), int64(spent))
	b.c.cost.budget.Settle(int64(reserved), int64(spent))
	r.Attempts, r.Duration = int(rec.attempts.Load()), time.Since(t0)
	var (
		cut       *cutShortError
		budgetErr error
	)
	switch {
	case err == nil:
	case errors.Is(err, ErrDraining), errors.Is(err, ErrForcedShutdown), ctx.Err() != nil:
		r.Status, r.Err = StatusNotRun, err
	case errors.Is(err, ErrBudgetExceeded): // unreachable: reserve took the client's budget
		r.Status, r.Err = StatusNotRun, err
		budgetErr = err
	case rec.cut.Load() == deadlineDrain:
		cut = &cutShortError{Cause: ErrDraining, whose: "the drain's", Err: err}
		r.Status, r.Err = StatusNotRun, cut
	case rec.cut.Load() == deadlineCaller:
		cut = &cutShortError{Cause: context.DeadlineExceeded, whose: "the batch's", Err: err}
		r.Status, r.Err = StatusNotRun, cut
	default:
		r.Status, r.Err = StatusFailed, err
	}

	b.mu.Lock()
	defer b.mu.Unlock() // deferred: OnProgress may call runtime.Goexit
	b.p.InFlight--
	if cut != nil && b.cutCause == nil {
		b.cutCause = cut.Cause
	}
	if budgetErr != nil && b.budgetErr == nil {
		b.budgetErr = budgetErr // no later task starts
	}
	if b.finishLocked(i, r) && b.journal != nil && r.Status != StatusNotRun {
		jr := journalRecord{ID: r.ID, Fingerprint: p.fp, Status: r.Status, Attempts: r.Attempts,
			DurationMS: r.Duration.Milliseconds(), Usage: r.Usage, Cost: int64(spent), CostUnknown: r.Cost.Unknown}
		if b.keepText {
			jr.Text = r.Text
		}
		if r.Err != nil {
			jr.Error = r.Err.Error()
		}
		if err := b.journal.Append(jr); err != nil && b.journalErr == nil {
			b.journalErr = fmt.Errorf("journal write failed, stopping: %w", err)
		}
	}
	b.report()
}

// notRun records task i as not run without starting it.
func (b *batchRun) notRun(i int, id string, cause error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.p.Pending--
	b.finishLocked(i, TaskResult{ID: id, Status: StatusNotRun, Err: cause})
	b.report()
}

// finishLocked hands a task's result over and counts it; b.mu is held,
// which also serialises the deliveries. It reports whether the result was
// taken: when emit fails, the batch stops and the task is not journaled.
func (b *batchRun) finishLocked(i int, r TaskResult) bool {
	if err := b.deliver(i, r); err != nil {
		if b.sinkErr == nil {
			b.sinkErr = fmt.Errorf("llmdrain: batch stopped, the result of task %q was not taken: %w", r.ID, err)
		}
		b.p.NotRun++
		return false
	}
	if !r.Resumed {
		// Summed in picodollars, exactly, as the budget counts.
		b.spent += toPico(r.Cost.USD)
		b.p.Cost = Cost{USD: b.spent.usd(), Unknown: b.p.Cost.Unknown || r.Cost.Unknown}
	}
	switch r.Status {
	case StatusCompleted:
		b.p.Completed++
		if !r.Resumed {
			addUsage(&b.p.Usage, r.Usage)
		}
	case StatusFailed:
		b.p.Failed++
	case StatusNotRun:
		b.p.NotRun++
	}
	if r.Status != StatusNotRun && !r.Resumed {
		b.finished++
	}
	return true
}

// report sends the progress to OnProgress; b.mu is held, which also
// serialises the OnProgress calls.
func (b *batchRun) report() {
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
	b.call(p)
}

// call calls OnProgress; b.mu is held. A panic there must not crash the
// process from a worker goroutine, nor leave the journal locked and the
// workers running when it happens on Batch's own: it is recovered and
// recorded, the workers are cancelled, and Batch panics with it once
// everything is cleaned up. A runtime.Goexit is recorded the same way, and
// goes on unwinding its goroutine.
func (b *batchRun) call(p Progress) {
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

// checkMaxCost validates BatchOptions.MaxCost.
func (c *Client) checkMaxCost(maxCost float64) error {
	switch {
	case !(maxCost >= 0) || maxCost > maxBudget:
		return fmt.Errorf("%w: MaxCost %v is not a budget in US dollars (0 to %g)", ErrInvalidBatch, maxCost, float64(maxBudget))
	case maxCost > 0 && len(c.cost.prices) == 0:
		return fmt.Errorf("%w: MaxCost needs Config.Prices, to know what tasks cost", ErrInvalidBatch)
	}
	return nil
}

// newBudget sets up the batch's budget, if it has one, with what the
// journal's earlier runs spent already counted.
func (b *batchRun) newBudget(maxCost float64) {
	if maxCost <= 0 {
		return
	}
	// Sticky: once a task is refused no later one starts, so that the
	// batch stops at one place, where a run with a larger cap goes on.
	b.budget = budget.New(int64(toPico(maxCost)), true)
	b.budget.Spend(int64(b.earlier))
}

// reserve reserves task p's worst-case cost in the batch's budget, if it
// has one, and returns it; the caller settles it. When the task may not
// start, it returns why: ctx's cause if ctx ended while it waited, or an
// error matching ErrBudgetExceeded, which also stops the batch.
func (b *batchRun) reserve(ctx context.Context, p prepared) (pico, error) {
	client := b.c.cost.budget
	if b.budget == nil && client == nil {
		return 0, nil
	}
	bd := bound{promptBytes: p.size, n: 1}
	if p.chat != nil {
		bd = chatBound(p.chat, p.size)
	} else {
		bd.model, bd.embeddings = string(p.emb.Model), true
	}
	// The client's budget (Config.MaxCost) too, waiting as the batch's
	// does, rather than the transport's refusal at once: the tasks in
	// flight are the batch's own, and will settle.
	worst, err := b.c.cost.worst(bd)
	if err == nil {
		if err = b.take(ctx, b.budget, worst, p.id, "batch's"); err == nil {
			if err = b.take(ctx, client, worst, p.id, "client's"); err != nil {
				b.budget.Settle(int64(worst), 0)
			}
		}
	}
	if err != nil {
		if errors.Is(err, ErrBudgetExceeded) {
			b.mu.Lock()
			if b.budgetErr == nil {
				b.budgetErr = err
			}
			b.mu.Unlock()
		}
		return 0, err
	}
	if b.stopped(ctx) { // while it waited
		b.budget.Settle(int64(worst), 0)
		client.Settle(int64(worst), 0)
		return 0, b.stopCause(ctx)
	}
	return worst, nil
}

// take reserves worst in bg, if not nil, for task id; whose names bg in
// the error, which matches ErrBudgetExceeded, or is why the batch stopped
// when ctx ended while it waited.
func (b *batchRun) take(ctx context.Context, bg *budget.Budget, worst pico, id, whose string) error {
	err := bg.Reserve(ctx, int64(worst))
	switch {
	case errors.Is(err, budget.ErrExceeded):
		return fmt.Errorf("%w: task %q could cost up to $%.6f, and $%.6f of the %s $%.6f is spent",
			ErrBudgetExceeded, id, worst.usd(), pico(bg.Spent()).usd(), whose, pico(bg.Max()).usd())
	case err != nil:
		return b.stopCause(ctx)
	}
	return nil
}

// price sets r.Cost, the cost of an answer from respModel to a request
// for reqModel, and returns what the budget counts for it: the cost, or,
// when the answer reported no usage, the reservation it had.
func (b *batchRun) price(r *TaskResult, respModel, reqModel string, reserved pico) pico {
	u := usageOf(r.Usage)
	cost, p := b.c.cost.of(respModel, reqModel, u)
	r.Cost = cost
	if !u.Known {
		return reserved
	}
	return p
}

// journaledCost is the cost of the task a journal record describes.
func journaledCost(rec journalRecord) Cost {
	if rec.CostUnknown {
		return Cost{Unknown: true}
	}
	return Cost{USD: pico(rec.Cost).usd()}
}
