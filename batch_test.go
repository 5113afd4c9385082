package llmdrain

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/llmdrain/llmdrain/internal/journal"
	"github.com/llmdrain/llmdrain/llmtest"
)

func prompts(n int) []Task {
	tasks := make([]Task, n)
	for i := range tasks {
		tasks[i] = Task{Prompt: fmt.Sprintf("prompt number %d", i)}
	}
	return tasks
}

func TestBatchResultsInOrder(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(5*time.Millisecond), llmtest.WithJitter(1), llmtest.WithSeed(1))
	c := newTestClient(t, srv, Config{})
	tasks := prompts(30)
	tasks[3].ID = "custom"
	res, err := c.Batch(context.Background(), tasks, BatchOptions{Concurrency: 7})
	require.NoError(t, err)
	require.Len(t, res.Results, 30)
	for i, r := range res.Results {
		assert.Equal(t, StatusCompleted, r.Status)
		assert.Equal(t, llmtest.Reply(tasks[i].Prompt), r.Text, "result %d out of order", i)
		assert.Equal(t, 1, r.Attempts)
		assert.Positive(t, r.Usage.TotalTokens)
		assert.Positive(t, r.Duration)
	}
	assert.Equal(t, "custom", res.Results[3].ID)
	assert.Equal(t, 30, res.Completed)
	var sum int
	for _, r := range res.Results {
		sum += r.Usage.TotalTokens
	}
	assert.Equal(t, sum, res.Usage.TotalTokens)
}

func TestBatchDerivedIDsAreStable(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	tasks := []Task{{Prompt: "same"}, {Prompt: "same"}, {Prompt: "other"}}
	r1, err := c.Batch(context.Background(), tasks, BatchOptions{})
	require.NoError(t, err)
	r2, err := c.Batch(context.Background(), tasks, BatchOptions{})
	require.NoError(t, err)
	for i := range tasks {
		assert.Equal(t, r1.Results[i].ID, r2.Results[i].ID)
	}
	assert.NotEqual(t, r1.Results[0].ID, r1.Results[1].ID, "the same prompt at two positions is two tasks")
}

func TestBatchConcurrencyLimit(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(20*time.Millisecond))
	c := newTestClient(t, srv, Config{})
	res, err := c.Batch(context.Background(), prompts(40), BatchOptions{Concurrency: 5})
	require.NoError(t, err)
	assert.Equal(t, 40, res.Completed)
	assert.Equal(t, 5, srv.Stats().MaxInFlight, "the limit is reached and never exceeded")
}

func TestBatchRetriesCountedPerTask(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(503), llmtest.RateLimitedMS(0), llmtest.OK(), llmtest.Reset())
	c := newTestClient(t, srv, Config{})
	res, err := c.Batch(context.Background(), prompts(3), BatchOptions{Concurrency: 1})
	require.NoError(t, err)
	assert.Equal(t, []int{3, 2, 1}, []int{res.Results[0].Attempts, res.Results[1].Attempts, res.Results[2].Attempts})
	assert.Equal(t, 3, res.Completed)
}

func TestBatchFailureIsolated(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.OK(), llmtest.Status(400), llmtest.OK())
	c := newTestClient(t, srv, Config{})
	res, err := c.Batch(context.Background(), prompts(4), BatchOptions{Concurrency: 1})
	require.NoError(t, err, "failed tasks are results, not a batch error")
	assert.Equal(t, StatusFailed, res.Results[1].Status)
	var apiErr *openai.APIError
	require.ErrorAs(t, res.Results[1].Err, &apiErr)
	assert.Equal(t, 400, apiErr.HTTPStatusCode)
	assert.Equal(t, 1, res.Results[1].Attempts)
	for _, i := range []int{0, 2, 3} {
		assert.Equal(t, StatusCompleted, res.Results[i].Status)
	}
	assert.Equal(t, 3, res.Completed)
	assert.Equal(t, 1, res.Failed)
}

func TestBatchCancelMarksRestNotRun(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(10*time.Millisecond))
	c := newTestClient(t, srv, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	res, err := c.Batch(ctx, prompts(50), BatchOptions{Concurrency: 2, OnProgress: func(p Progress) {
		if p.Completed == 5 {
			cancel()
		}
	}})
	require.Error(t, err)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Equal(t, 0, res.Failed, "cancelled tasks are not failures")
	assert.GreaterOrEqual(t, res.Completed, 5)
	assert.Equal(t, 50, res.Completed+res.NotRun)
	assert.Contains(t, err.Error(), fmt.Sprintf("%d of 50 tasks not run", res.NotRun))
	for _, r := range res.Results {
		if r.Status == StatusNotRun {
			assert.Error(t, r.Err)
		}
	}
}

func TestBatchDrainLetsRunningTasksFinish(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(50*time.Millisecond))
	c := newTestClient(t, srv, Config{})
	drained := make(chan error, 1)
	var once sync.Once
	res, err := c.Batch(context.Background(), prompts(40), BatchOptions{Concurrency: 4, OnProgress: func(p Progress) {
		if p.Completed >= 8 {
			once.Do(func() {
				go func() { drained <- c.Shutdown(context.Background()) }()
				waitFor(t, c.Tracker().Draining)
			})
		}
	}})
	require.NoError(t, <-drained)
	assert.ErrorIs(t, err, ErrDraining)
	assert.Equal(t, 0, res.Failed)
	assert.Positive(t, res.NotRun)
	assert.Equal(t, 40, res.Completed+res.NotRun)
	// Every task the server started was seen through to the end.
	assert.Equal(t, settled(t, srv).Stats().Succeeded, res.Completed)
}

func TestBatchForcedDrainRecordsNotRun(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang(), llmtest.Hang())
	c := newTestClient(t, srv, Config{})
	type out struct {
		res *BatchResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := c.Batch(context.Background(), prompts(10), BatchOptions{Concurrency: 2})
		done <- out{res, err}
	}()
	waitInFlight(t, srv, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	var fe *ForcedDrainError
	require.ErrorAs(t, c.Shutdown(ctx), &fe)
	o := <-done
	assert.ErrorIs(t, o.err, ErrDraining)
	assert.Equal(t, 0, o.res.Failed)
	assert.Equal(t, 10, o.res.NotRun)
	assert.ErrorIs(t, o.res.Results[0].Err, ErrForcedShutdown)
}

func TestBatchBadInput(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	res, err := c.Batch(context.Background(), nil, BatchOptions{})
	require.NoError(t, err)
	assert.Empty(t, res.Results)

	_, err = c.Batch(context.Background(), []Task{{ID: "a", Prompt: "x"}, {ID: "b", Prompt: "y"}, {ID: "a", Prompt: "z"}}, BatchOptions{})
	assert.ErrorIs(t, err, ErrInvalidBatch)
	assert.Contains(t, err.Error(), `duplicate task ID "a" at positions 0 and 2`)

	_, err = c.Batch(context.Background(), []Task{{Prompt: "x"}, {}}, BatchOptions{})
	assert.ErrorIs(t, err, ErrInvalidBatch)
	assert.Contains(t, err.Error(), "task 1")
	assert.Equal(t, 0, srv.Stats().Requests, "bad input is rejected before any call")
}

// TestBatchJournalResume stops a batch with a graceful drain, as a
// rollout would, and resumes it with a new client: every prompt is paid for
// exactly once over both runs.
func TestBatchJournalResume(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(5*time.Millisecond))
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "batch.jsonl")
	tasks := prompts(30)

	drained := make(chan error, 1)
	var once sync.Once
	res, err := c.Batch(context.Background(), tasks, BatchOptions{Concurrency: 3, Journal: path, OnProgress: func(p Progress) {
		if p.Completed >= 10 {
			once.Do(func() {
				go func() { drained <- c.Shutdown(context.Background()) }()
				waitFor(t, c.Tracker().Draining)
			})
		}
	}})
	require.NoError(t, <-drained)
	require.ErrorIs(t, err, ErrDraining)
	first := res.Completed
	require.Less(t, first, 30)

	c = newTestClient(t, srv, Config{})
	res, err = c.Batch(context.Background(), tasks, BatchOptions{Concurrency: 3, Journal: path})
	require.NoError(t, err)
	assert.Equal(t, 30, res.Completed)
	assert.Equal(t, first, res.Resumed)
	for i, r := range res.Results {
		assert.Equal(t, llmtest.Reply(tasks[i].Prompt), r.Text)
	}
	settled(t, srv)
	for _, task := range tasks {
		assert.Equal(t, 1, srv.Completed(task.Prompt), "%q paid for more than once", task.Prompt)
	}

	// A third run has nothing to do.
	before := srv.Stats().Requests
	res, err = c.Batch(context.Background(), tasks, BatchOptions{Journal: path})
	require.NoError(t, err)
	assert.Equal(t, 30, res.Resumed)
	assert.Equal(t, before, srv.Stats().Requests)
}

// TestBatchJournalResumeAfterCancel: cancelling the context aborts running
// calls, so some may be paid for and lost, but everything recorded as
// completed is skipped on resume.
func TestBatchJournalResumeAfterCancel(t *testing.T) {
	srv := newServer(t, llmtest.WithLatency(5*time.Millisecond))
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "batch.jsonl")
	tasks := prompts(20)
	ctx, cancel := context.WithCancel(context.Background())
	res, err := c.Batch(ctx, tasks, BatchOptions{Concurrency: 2, Journal: path, OnProgress: func(p Progress) {
		if p.Completed == 5 {
			cancel()
		}
	}})
	cancel()
	require.ErrorIs(t, err, context.Canceled)
	done := map[string]bool{}
	for _, r := range res.Results {
		if r.Status == StatusCompleted {
			done[r.ID] = true
		}
	}
	res, err = c.Batch(context.Background(), tasks, BatchOptions{Concurrency: 2, Journal: path})
	require.NoError(t, err)
	assert.Equal(t, 20, res.Completed)
	for _, r := range res.Results {
		assert.Equal(t, done[r.ID], r.Resumed, r.ID)
	}
}

func TestBatchJournalRerunsFailedAndChanged(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(400))
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	tasks := []Task{{ID: "a", Prompt: "first"}, {ID: "b", Prompt: "second"}}
	res, err := c.Batch(context.Background(), tasks, BatchOptions{Concurrency: 1, Journal: path})
	require.NoError(t, err)
	assert.Equal(t, StatusFailed, res.Results[0].Status)

	tasks[1].Prompt = "second, edited" // same ID, different request
	res, err = c.Batch(context.Background(), tasks, BatchOptions{Concurrency: 1, Journal: path})
	require.NoError(t, err)
	assert.Equal(t, 0, res.Resumed, "a failed task and a changed task both run again")
	assert.Equal(t, llmtest.Reply("second, edited"), res.Results[1].Text)
}

func TestBatchJournalTornLastLine(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	tasks := prompts(5)
	_, err := c.Batch(context.Background(), tasks[:3], BatchOptions{Journal: path})
	require.NoError(t, err)
	// A power cut mid-write leaves half a record without its newline.
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"id":"3-abc","fp":"12","status":"compl`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	res, err := c.Batch(context.Background(), tasks, BatchOptions{Journal: path})
	require.NoError(t, err)
	assert.Equal(t, 3, res.Resumed)
	assert.Equal(t, 5, res.Completed)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.NotContains(t, string(data), `"compl`+"{", "the torn line was dropped, not glued to the next record")
	assert.Equal(t, 6, strings.Count(string(data), "\n"), "header and five records")
}

func TestBatchForeignJournalUntouched(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	dir := t.TempDir()
	for name, content := range map[string]string{
		"notes.txt":  "my precious notes\n",
		"other.json": `{"some":"json"}` + "\n",
		"bad.jsonl":  `{"llmdrain_journal":1}` + "\nnot json\n" + `{"id":"x"}` + "\n",
	} {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
		_, err := c.Batch(context.Background(), prompts(2), BatchOptions{Journal: path})
		assert.ErrorIs(t, err, ErrInvalidBatch, name)
		assert.Contains(t, err.Error(), path)
		got, rerr := os.ReadFile(path)
		require.NoError(t, rerr)
		assert.Equal(t, content, string(got), "%s was modified", name)
	}
	_, err := c.Batch(context.Background(), prompts(2), BatchOptions{Journal: dir})
	assert.Error(t, err, "a directory is not a journal")
	assert.Equal(t, 0, srv.Stats().Requests)
}

func TestBatchJournalLocked(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	held, _, err := journal.Open(path)
	require.NoError(t, err)
	_, err = c.Batch(context.Background(), prompts(2), BatchOptions{Journal: path})
	assert.ErrorIs(t, err, ErrJournalLocked)
	assert.Equal(t, 0, srv.Stats().Requests)
	require.NoError(t, held.Close())
	_, err = c.Batch(context.Background(), prompts(2), BatchOptions{Journal: path})
	assert.NoError(t, err, "the lock is released on close")
}

func TestBatchProgress(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.OK(), llmtest.Status(401))
	c := newTestClient(t, srv, Config{})
	var seen []Progress
	_, err := c.Batch(context.Background(), prompts(6), BatchOptions{Concurrency: 1, OnProgress: func(p Progress) {
		seen = append(seen, p)
	}})
	require.NoError(t, err)
	require.Len(t, seen, 6)
	for i, p := range seen {
		assert.Equal(t, 6, p.Total)
		assert.Equal(t, i+1, p.Completed+p.Failed)
		assert.Equal(t, 6-i-1, p.Pending+p.InFlight)
	}
	last := seen[5]
	assert.Equal(t, 5, last.Completed)
	assert.Equal(t, 1, last.Failed)
	assert.Positive(t, last.Rate)
	assert.Positive(t, last.Usage.TotalTokens)
	assert.Regexp(t, `^5/6 done, 1 failed, 0 in flight, [0-9.]+/s, \d+ tokens$`, last.String())
	assert.Contains(t, seen[2].String(), "ETA")
}

// runBatchChild is the child of TestBatchSIGTERMResumesExactlyOnce: a
// 200-task batch with a journal, shut down gracefully by SIGTERM.
func runBatchChild() int {
	c, err := New(Config{APIKey: fakeKey, BaseURL: os.Getenv("LLMDRAIN_TEST_URL")})
	if err != nil {
		fmt.Println("NEW:", err)
		return 2
	}
	sd := &Shutdown{Timeout: time.Minute}
	sd.Register("llm", c.Shutdown)
	ctx, stop := context.WithCancel(context.Background())
	shut := make(chan error, 1)
	go func() { shut <- sd.Run(ctx) }()
	fmt.Fprintln(os.Stderr, "batch starting")
	res, err := c.Batch(context.Background(), prompts(200), BatchOptions{Concurrency: 8, Journal: os.Getenv("LLMDRAIN_TEST_JOURNAL")})
	stop() // no signal came: let Run finish
	if serr := <-shut; serr != nil {
		fmt.Println("SHUTDOWN:", serr)
		return 3
	}
	fmt.Printf("completed=%d resumed=%d failed=%d notrun=%d\n", res.Completed, res.Resumed, res.Failed, res.NotRun)
	if err != nil && !errors.Is(err, ErrDraining) {
		fmt.Println("BATCH:", err)
		return 4
	}
	return 0
}

func TestBatchSIGTERMResumesExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	srv := newServer(t, llmtest.WithLatency(20*time.Millisecond))
	path := filepath.Join(t.TempDir(), "batch.jsonl")
	t.Setenv("LLMDRAIN_TEST_JOURNAL", path)

	ch := startChild(t, "batch", srv.URL)
	ch.waitLine(t, "batch starting")
	waitFor(t, func() bool { return srv.Stats().Succeeded >= 40 })
	require.NoError(t, ch.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, ch.wait(t, 30*time.Second), "stdout: %s", ch.stdout.String())
	var completed, resumed, failed, notRun int
	_, err := fmt.Sscanf(ch.stdout.String(), "completed=%d resumed=%d failed=%d notrun=%d", &completed, &resumed, &failed, &notRun)
	require.NoError(t, err, ch.stdout.String())
	assert.Zero(t, failed)
	assert.Positive(t, notRun, "the signal came mid-batch")
	assert.Equal(t, 200, completed+notRun)
	firstCompleted := completed

	ch = startChild(t, "batch", srv.URL)
	require.Equal(t, 0, ch.wait(t, 60*time.Second), "stdout: %s", ch.stdout.String())
	_, err = fmt.Sscanf(ch.stdout.String(), "completed=%d resumed=%d failed=%d notrun=%d", &completed, &resumed, &failed, &notRun)
	require.NoError(t, err, ch.stdout.String())
	assert.Equal(t, 200, completed)
	assert.Equal(t, firstCompleted, resumed, "everything the first run finished was skipped")

	settled(t, srv)
	for _, task := range prompts(200) {
		assert.Equal(t, 1, srv.Completed(task.Prompt), "%q completed more than once in total", task.Prompt)
	}
}

// BenchmarkBatch runs 1,000 tasks at concurrency 50 against 20 ms of
// latency and reports wall time as a ratio to the ideal ceil(1000/50) x
// 20 ms, with and without a journal.
func BenchmarkBatch(b *testing.B) {
	const n, conc, latency = 1000, 50, 20 * time.Millisecond
	ideal := time.Duration(math.Ceil(float64(n)/conc)) * latency
	for _, withJournal := range []bool{false, true} {
		b.Run(fmt.Sprintf("journal=%v", withJournal), func(b *testing.B) {
			srv := llmtest.NewServer(llmtest.WithLatency(latency))
			defer srv.Close()
			c, err := New(Config{APIKey: fakeKey, BaseURL: srv.URL, HTTPClient: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc}}})
			if err != nil {
				b.Fatal(err)
			}
			tasks := prompts(n)
			var total time.Duration
			for i := 0; i < b.N; i++ {
				opts := BatchOptions{Concurrency: conc}
				if withJournal {
					opts.Journal = filepath.Join(b.TempDir(), fmt.Sprintf("j%d.jsonl", i))
				}
				start := time.Now()
				res, err := c.Batch(context.Background(), tasks, opts)
				total += time.Since(start)
				if err != nil || res.Completed != n {
					b.Fatalf("completed %d: %v", res.Completed, err)
				}
			}
			b.ReportMetric(float64(total)/float64(b.N)/float64(ideal), "x-ideal")
		})
	}
}

// gateTransport holds the response of the first attempt until release is
// closed, so a test can start a drain at the exact moment a retryable
// answer is in hand and the retry decision not yet made.
type gateTransport struct {
	base     *http.Transport
	once     sync.Once
	arrived  chan struct{}
	release  chan struct{}
	released sync.Once
}

func newGate(t *testing.T) *gateTransport {
	g := &gateTransport{base: &http.Transport{}, arrived: make(chan struct{}), release: make(chan struct{})}
	t.Cleanup(g.open)
	return g
}

func (g *gateTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := g.base.RoundTrip(req)
	g.once.Do(func() {
		close(g.arrived)
		<-g.release
	})
	return resp, err
}

func (g *gateTransport) open() { g.released.Do(func() { close(g.release) }) }

func (g *gateTransport) CloseIdleConnections() { g.base.CloseIdleConnections() }

// TestBatchRetryCutByDrainDeadlineIsNotRun: a task answered 429 with
// Retry-After: 1 while a drain has 500 ms left is not retried, and ends
// not run, not failed: the drain stopped it, and a resumed batch runs it.
func TestBatchRetryCutByDrainDeadlineIsNotRun(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.RateLimited(time.Second))
	gate := newGate(t)
	c := newTestClient(t, srv, Config{HTTPClient: &http.Client{Transport: gate}})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	tasks := []Task{{ID: "a", Prompt: "cut by the drain"}}

	type out struct {
		res *BatchResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := c.Batch(context.Background(), tasks, BatchOptions{Journal: path})
		done <- out{res, err}
	}()
	<-gate.arrived // the 429 is in hand; the retry not yet decided
	dctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- c.Shutdown(dctx) }()
	waitFor(t, c.Tracker().Draining) // the drain's deadline is known from here
	gate.open()
	o := <-done
	require.NoError(t, <-drained, "the call ended before the drain's deadline")

	r := o.res.Results[0]
	assert.Equal(t, StatusNotRun, r.Status, "%v", r.Err)
	assert.ErrorIs(t, r.Err, ErrDraining)
	var apiErr *openai.APIError
	require.ErrorAs(t, r.Err, &apiErr, "the server's answer is kept")
	assert.Equal(t, 429, apiErr.HTTPStatusCode)
	assert.Contains(t, r.Err.Error(), "drain's deadline")
	assert.Equal(t, 1, r.Attempts)
	assert.Equal(t, 0, o.res.Failed)
	assert.Equal(t, 1, o.res.NotRun)
	require.Error(t, o.err, "a not-run task makes the batch's error")
	assert.ErrorIs(t, o.err, ErrDraining)
	assert.Contains(t, o.err.Error(), "1 of 1 tasks not run")

	res, err := newTestClient(t, srv, Config{}).Batch(context.Background(), tasks, BatchOptions{Journal: path})
	require.NoError(t, err)
	assert.Equal(t, 0, res.Resumed, "the task is run again")
	assert.Equal(t, 1, res.Completed)
	assert.Equal(t, llmtest.Reply("cut by the drain"), res.Results[0].Text)
}

// TestBatchRetryCutByContextDeadlineIsNotRun: the same with the batch's
// own deadline, which has not passed yet when the task gives up.
func TestBatchRetryCutByContextDeadlineIsNotRun(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.RateLimited(10 * time.Second)) // under MaxRetryAfter, past the deadline
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	tasks := []Task{{ID: "a", Prompt: "cut by the deadline"}, {ID: "b", Prompt: "fine"}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := c.Batch(ctx, tasks, BatchOptions{Concurrency: 1, Journal: path})
	require.NoError(t, ctx.Err(), "the task gave up before the deadline")

	r := res.Results[0]
	assert.Equal(t, StatusNotRun, r.Status, "%v", r.Err)
	assert.ErrorIs(t, r.Err, context.DeadlineExceeded)
	assert.NotErrorIs(t, r.Err, ErrDraining)
	var apiErr *openai.APIError
	require.ErrorAs(t, r.Err, &apiErr)
	assert.Equal(t, 429, apiErr.HTTPStatusCode)
	assert.Equal(t, StatusCompleted, res.Results[1].Status)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotErrorIs(t, err, ErrDraining, "no drain happened")
	assert.Contains(t, err.Error(), "1 of 2 tasks not run")

	res, err = c.Batch(context.Background(), tasks, BatchOptions{Journal: path})
	require.NoError(t, err)
	assert.Equal(t, 1, res.Resumed)
	assert.False(t, res.Results[0].Resumed, "the cut task is run again")
	assert.Equal(t, llmtest.Reply("cut by the deadline"), res.Results[0].Text)
	assert.Equal(t, 1, settled(t, srv).Completed("cut by the deadline"))
}

// TestBatchJournalKeepsCompletionAfterIDReuse: a completed request stays
// completed in the journal when its ID is later used for another request
// that fails; going back to the first request costs nothing.
func TestBatchJournalKeepsCompletionAfterIDReuse(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	p1 := []Task{{ID: "a", Prompt: "P1"}}
	p2 := []Task{{ID: "a", Prompt: "P2"}}

	res, err := c.Batch(context.Background(), p1, BatchOptions{Journal: path})
	require.NoError(t, err)
	require.Equal(t, StatusCompleted, res.Results[0].Status)

	srv.Script(llmtest.Status(400))
	res, err = c.Batch(context.Background(), p2, BatchOptions{Journal: path})
	require.NoError(t, err)
	require.Equal(t, StatusFailed, res.Results[0].Status)

	before := srv.Stats().Requests
	res, err = c.Batch(context.Background(), p1, BatchOptions{Journal: path})
	require.NoError(t, err)
	assert.True(t, res.Results[0].Resumed, "P1's answer is in the journal")
	assert.Equal(t, llmtest.Reply("P1"), res.Results[0].Text)
	assert.Equal(t, before, srv.Stats().Requests, "P1 paid for twice")
}

// TestBatchJournalCompletionOutlivesLaterFailure: a completion is final.
// A failure recorded after it for the same ID and the same request (a
// journal written by an older version, or merged by hand) does not erase
// the answer that was paid for.
func TestBatchJournalCompletionOutlivesLaterFailure(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	tasks := []Task{{ID: "a", Prompt: "P1"}}
	res, err := c.Batch(context.Background(), tasks, BatchOptions{Journal: path})
	require.NoError(t, err)
	require.Equal(t, StatusCompleted, res.Results[0].Status)
	p, err := c.prepareTask(0, tasks[0])
	require.NoError(t, err)

	j, _, err := journal.Open(path)
	require.NoError(t, err)
	require.NoError(t, j.Append(journalRecord{ID: "a", Fingerprint: p.fp, Status: StatusFailed, Error: "status code: 500"}))
	require.NoError(t, j.Close())

	before := srv.Stats().Requests
	res, err = c.Batch(context.Background(), tasks, BatchOptions{Journal: path})
	require.NoError(t, err)
	assert.True(t, res.Results[0].Resumed)
	assert.Equal(t, llmtest.Reply("P1"), res.Results[0].Text)
	assert.Equal(t, before, srv.Stats().Requests)
}

// TestBatchProgressGoexit: runtime.Goexit in OnProgress (t.FailNow called
// from the wrong goroutine) neither deadlocks the batch nor goes unnoticed.
func TestBatchProgressGoexit(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	var recovered any
	func() {
		defer func() { recovered = recover() }()
		_, _ = c.Batch(context.Background(), prompts(5), BatchOptions{Concurrency: 2, Journal: path, OnProgress: func(Progress) {
			runtime.Goexit()
		}})
	}()
	require.NotNil(t, recovered)
	assert.Contains(t, fmt.Sprint(recovered), "OnProgress called runtime.Goexit")
	_, err := c.Batch(context.Background(), prompts(5), BatchOptions{Journal: path})
	require.NoError(t, err, "the journal was unlocked")
}

// TestBatchProgressPanic: a panic in OnProgress, on a worker goroutine or
// on Batch's own, reaches Batch's caller once the batch has cleaned up: the
// workers are gone, the calls done, and the journal is unlocked.
func TestBatchProgressPanic(t *testing.T) {
	for name, setup := range map[string]func(context.CancelFunc){
		"on a worker":          func(context.CancelFunc) {},
		"on Batch's goroutine": func(cancel context.CancelFunc) { cancel() }, // every task ends not run, from the loop
	} {
		t.Run(name, func(t *testing.T) {
			srv := llmtest.NewServer(llmtest.WithAPIKey(fakeKey), llmtest.WithLatency(5*time.Millisecond))
			defer srv.Close()
			ignore := goleak.IgnoreCurrent()
			c := newTestClient(t, srv, Config{})
			path := filepath.Join(t.TempDir(), "j.jsonl")
			tasks := prompts(20)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			setup(cancel)
			boom := errors.New("boom")
			calls := 0
			var recovered any
			func() {
				defer func() { recovered = recover() }()
				_, _ = c.Batch(ctx, tasks, BatchOptions{Concurrency: 4, Journal: path, OnProgress: func(Progress) {
					calls++
					panic(boom)
				}})
			}()
			require.NotNil(t, recovered, "the panic reaches the caller")
			err, ok := recovered.(error)
			require.True(t, ok, "%v", recovered)
			assert.ErrorIs(t, err, boom)
			assert.Contains(t, err.Error(), "OnProgress panicked: boom")
			assert.Contains(t, err.Error(), "TestBatchProgressPanic", "the stack of the original panic")
			assert.Equal(t, 1, calls, "OnProgress is not called again")
			assert.Equal(t, 0, c.Tracker().InFlight())

			// The journal was closed and unlocked; what completed is in it.
			res, err := c.Batch(context.Background(), tasks, BatchOptions{Concurrency: 4, Journal: path})
			require.NoError(t, err)
			assert.Equal(t, 20, res.Completed)
			c.http.CloseIdleConnections()
			srv.Close()
			goleak.VerifyNone(t, ignore)
		})
	}
}
