package llmdrain

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// seqOf yields the tasks and counts how many were read.
func seqOf(tasks []Task, read *atomic.Int32) iter.Seq2[Task, error] {
	return func(yield func(Task, error) bool) {
		for _, t := range tasks {
			if read != nil {
				read.Add(1)
			}
			if !yield(t, nil) {
				return
			}
		}
	}
}

func idTasks(n int) []Task {
	tasks := make([]Task, n)
	for i := range tasks {
		tasks[i] = Task{ID: fmt.Sprintf("req-%d", i), Prompt: fmt.Sprintf("prompt number %d", i)}
	}
	return tasks
}

// collector is an emit that keeps the results by ID.
type collector struct {
	mu  sync.Mutex
	got map[string]TaskResult
	n   int
}

func (c *collector) emit(r TaskResult) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.got == nil {
		c.got = make(map[string]TaskResult)
	}
	c.got[r.ID] = r
	c.n++
	return nil
}

func TestBatchSeqEmitsEveryResult(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	tasks := idTasks(40)
	var col collector
	res, err := c.BatchSeq(context.Background(), seqOf(tasks, nil), BatchOptions{Concurrency: 5}, col.emit)
	require.NoError(t, err)
	assert.Nil(t, res.Results)
	assert.Equal(t, 40, res.Completed)
	assert.Equal(t, 40, col.n, "one emit per task")
	for _, task := range tasks {
		r := col.got[task.ID]
		assert.Equal(t, StatusCompleted, r.Status)
		assert.Equal(t, llmtest.Reply(task.Prompt), r.Text)
		require.NotNil(t, r.Response)
		assert.Equal(t, r.Text, r.Response.Choices[0].Message.Content)
	}
	var sum int
	for _, r := range col.got {
		sum += r.Usage.TotalTokens
	}
	assert.Equal(t, sum, res.Usage.TotalTokens)
}

// holdTransport holds every request until released, counting them.
type holdTransport struct {
	base    http.RoundTripper
	arrived chan struct{}
	release chan struct{}
}

func (h *holdTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	h.arrived <- struct{}{}
	<-h.release
	return h.base.RoundTrip(req)
}

// TestBatchSeqReadsAsSlotsFree: a stream reads a task only when a slot
// is free for it, so memory is bounded by the concurrency, not the input.
func TestBatchSeqReadsAsSlotsFree(t *testing.T) {
	srv := newServer(t)
	h := &holdTransport{base: &http.Transport{}, arrived: make(chan struct{}, 100), release: make(chan struct{})}
	c := newTestClient(t, srv, Config{HTTPClient: &http.Client{Transport: h}})
	var read atomic.Int32
	done := make(chan error, 1)
	go func() {
		_, err := c.BatchSeq(context.Background(), seqOf(idTasks(50), &read), BatchOptions{Concurrency: 3}, nil)
		done <- err
	}()
	for range 3 {
		<-h.arrived
	}
	// Three calls are held; the reader may have taken one more task,
	// waiting for a slot, and no other.
	assert.LessOrEqual(t, read.Load(), int32(4))
	close(h.release)
	require.NoError(t, <-done)
	assert.Equal(t, int32(50), read.Load())
	h.base.(*http.Transport).CloseIdleConnections()
}

// TestBatchSeqJournalKeepsKeysOnly: a stream's journal holds no answers,
// and a second run emits every task as resumed without a call.
func TestBatchSeqJournalKeepsKeysOnly(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	tasks := idTasks(10)
	_, err := c.BatchSeq(context.Background(), seqOf(tasks, nil), BatchOptions{Journal: path}, nil)
	require.NoError(t, err)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.NotContains(t, string(data), "You said", "no answer in a stream's journal")
	assert.Equal(t, 11, strings.Count(string(data), "\n"), "a header and one record per task")

	before := srv.Stats().Requests
	tasks = append(tasks[:5], append([]Task{{ID: "inserted", Prompt: "a new line"}}, tasks[5:]...)...)
	var col collector
	res, err := c.BatchSeq(context.Background(), seqOf(tasks, nil), BatchOptions{Journal: path}, col.emit)
	require.NoError(t, err)
	assert.Equal(t, 10, res.Resumed)
	assert.Equal(t, 11, res.Completed)
	assert.Equal(t, before+1, srv.Stats().Requests, "only the inserted task was paid for")
	assert.False(t, col.got["inserted"].Resumed)
	assert.True(t, col.got["req-3"].Resumed)
	assert.Empty(t, col.got["req-3"].Text)
}

// TestBatchSeqEmitErrorStops: when emit fails, no task starts, the error
// is returned, and the task whose result was not taken runs again.
func TestBatchSeqEmitErrorStops(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	path := filepath.Join(t.TempDir(), "j.jsonl")
	full := errors.New("disk full")
	var n atomic.Int32
	var read atomic.Int32
	res, err := c.BatchSeq(context.Background(), seqOf(idTasks(20), &read), BatchOptions{Concurrency: 1, Journal: path},
		func(r TaskResult) error {
			if n.Add(1) == 3 {
				return full
			}
			return nil
		})
	require.ErrorIs(t, err, full)
	assert.Equal(t, 2, res.Completed)
	assert.Less(t, read.Load(), int32(20), "the stream stopped reading")

	var col collector
	res, err = c.BatchSeq(context.Background(), seqOf(idTasks(20), nil), BatchOptions{Journal: path}, col.emit)
	require.NoError(t, err)
	assert.Equal(t, 2, res.Resumed, "the third task, whose result was not taken, ran again")
	assert.Equal(t, 20, res.Completed)
}

func TestBatchSeqBadInput(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	tasks := idTasks(3)
	tasks = append(tasks, Task{ID: "req-1", Prompt: "again"})
	_, err := c.BatchSeq(context.Background(), seqOf(tasks, nil), BatchOptions{}, nil)
	require.ErrorIs(t, err, ErrInvalidBatch)
	assert.Contains(t, err.Error(), `duplicate task ID "req-1" at positions 1 and 3`)

	broken := errors.New("torn line")
	seq := func(yield func(Task, error) bool) {
		if yield(Task{ID: "a", Prompt: "a"}, nil) {
			yield(Task{}, broken)
		}
	}
	_, err = c.BatchSeq(context.Background(), seq, BatchOptions{}, nil)
	require.ErrorIs(t, err, ErrInvalidBatch)
	require.ErrorIs(t, err, broken)

	before := srv.Stats().Requests
	_, err = c.BatchSeq(context.Background(), seqOf(tasks, nil), BatchOptions{Shard: Shard{Index: 4, Count: 4}}, nil)
	require.ErrorIs(t, err, ErrInvalidBatch)
	_, err = c.Batch(context.Background(), idTasks(2), BatchOptions{Shard: Shard{Index: -1, Count: 2}})
	require.ErrorIs(t, err, ErrInvalidBatch)
	assert.Equal(t, before, srv.Stats().Requests, "bad shards are refused before any call")
}

// TestBatchSeqDrainStopsReading: after a drain, no more tasks are read;
// the read ones that did not run are counted not run.
func TestBatchSeqDrainStopsReading(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	var read atomic.Int32
	var col collector
	emit := func(r TaskResult) error {
		if r.ID == "req-4" {
			// Concurrency 1: no call is in flight, the drain ends at once.
			require.NoError(t, c.Shutdown(context.Background()))
		}
		return col.emit(r)
	}
	res, err := c.BatchSeq(context.Background(), seqOf(idTasks(100), &read), BatchOptions{Concurrency: 1}, emit)
	require.ErrorIs(t, err, ErrDraining)
	assert.Equal(t, 5, res.Completed)
	// The task read after the drain, and the one waiting for the slot if
	// it was read before, end not run; the rest is never read.
	assert.Equal(t, int(read.Load())-5, res.NotRun)
	assert.Contains(t, []int{1, 2}, res.NotRun)
}

// TestShardOwns: every ID is owned by exactly one shard, by its ID alone,
// and the hash is pinned so that shards do not move between versions.
func TestShardOwns(t *testing.T) {
	counts := make([]int, 4)
	for i := range 4000 {
		id := fmt.Sprintf("request-%d", i)
		owners := 0
		for s := range 4 {
			if (Shard{Index: s, Count: 4}).Owns(id) {
				owners++
				counts[s]++
			}
		}
		require.Equal(t, 1, owners, id)
	}
	for s, n := range counts {
		assert.InDelta(t, 1000, n, 150, "shard %d is unbalanced", s)
	}
	assert.True(t, Shard{}.Owns("anything"))
	assert.Equal(t, "2/4", Shard{Index: 2, Count: 4}.String())
	// Pin the shard of a few IDs.
	var pinned []int
	for _, id := range []string{"request-1", "request-2", "a", ""} {
		for s := range 4 {
			if (Shard{Index: s, Count: 4}).Owns(id) {
				pinned = append(pinned, s)
			}
		}
	}
	assert.Equal(t, pinnedShards, pinned)
}

// TestBatchShards: four shards of one batch run every task exactly once
// between them, and each reports the others' as skipped.
func TestBatchShards(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	tasks := idTasks(40)
	ran := 0
	for s := range 4 {
		res, err := c.Batch(context.Background(), tasks, BatchOptions{Shard: Shard{Index: s, Count: 4}})
		require.NoError(t, err)
		ran += res.Completed
		assert.Equal(t, 40, res.Completed+res.Skipped)
		for _, r := range res.Results {
			if r.Status == StatusSkipped {
				assert.False(t, Shard{Index: s, Count: 4}.Owns(r.ID))
			}
		}
	}
	assert.Equal(t, 40, ran)
	settled(t, srv)
	for _, task := range tasks {
		assert.Equal(t, 1, srv.Completed(task.Prompt), task.ID)
	}
}

func TestBatchEmbeddings(t *testing.T) {
	srv := newServer(t)
	c := newTestClient(t, srv, Config{})
	tasks := []Task{
		{ID: "e", Embeddings: &openai.EmbeddingRequest{Model: openai.SmallEmbedding3, Input: []string{"one", "two"}}},
		{ID: "c", Prompt: "chat too"},
	}
	res, err := c.Batch(context.Background(), tasks, BatchOptions{})
	require.NoError(t, err)
	e := res.Results[0]
	assert.Equal(t, StatusCompleted, e.Status)
	require.NotNil(t, e.Embeddings)
	assert.Len(t, e.Embeddings.Data, 2)
	assert.Positive(t, e.Usage.TotalTokens)
	assert.Nil(t, e.Response)
	assert.Equal(t, llmtest.Reply("chat too"), res.Results[1].Text)

	for _, bad := range []Task{
		{Embeddings: &openai.EmbeddingRequest{Input: "x"}},
		{Embeddings: &openai.EmbeddingRequest{Model: "m"}},
		{Prompt: "p", Embeddings: &openai.EmbeddingRequest{Model: "m", Input: "x"}},
	} {
		_, err := c.Batch(context.Background(), []Task{bad}, BatchOptions{})
		assert.ErrorIs(t, err, ErrInvalidBatch)
	}
}

// FNV-1a 64 of "" is 0xcbf29ce484222325, shard 1 of 4.
var pinnedShards = []int{0, 1, 0, 1}
