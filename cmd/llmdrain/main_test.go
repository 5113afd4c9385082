package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/batchfile"
	"github.com/llmdrain/llmdrain/llmtest"
)

// bin is the command, built once for all tests (with -race when the tests
// have it).
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "llmdrain-cmd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "llmdrain")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	goleak.VerifyTestMain(cleanupAfter{m, func() { os.RemoveAll(dir) }})
}

type cleanupAfter struct {
	m       *testing.M
	cleanup func()
}

func (c cleanupAfter) Run() int {
	defer c.cleanup()
	return c.m.Run()
}

const testKey = "sk-llmdrain-cmd-test-0123456789-secret"

// upstream is a fake LLM requiring testKey, and the env that makes the
// command use it.
func upstream(t *testing.T, opts ...llmtest.Option) (*llmtest.Server, []string) {
	srv := llmtest.NewServer(append(opts, llmtest.WithAPIKey(testKey))...)
	t.Cleanup(srv.Close)
	return srv, []string{llmdrain.EnvAPIKey + "=" + testKey, llmdrain.EnvBaseURL + "=" + srv.URL}
}

// proc is a running command.
type proc struct {
	cmd            *exec.Cmd
	mu             sync.Mutex
	stdout, stderr bytes.Buffer
	exited         chan struct{}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// start runs the command with a clean environment plus env: a developer's
// real key never reaches it.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), exited: make(chan struct{})}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HOLYSHEEP_") && !strings.HasPrefix(kv, "JOB_COMPLETION_INDEX=") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout = lockedWriter{&p.mu, &p.stdout}
	p.cmd.Stderr = lockedWriter{&p.mu, &p.stderr}
	require.NoError(t, p.cmd.Start())
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// wait returns the exit code, failing the test past timeout.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		t.Fatalf("still running after %v; stderr:\n%s", timeout, p.output())
	}
	out := p.output()
	assert.NotContains(t, out, testKey, "the API key in the command's output")
	return p.cmd.ProcessState.ExitCode()
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stdout.String() + p.stderr.String()
}

func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// writeInput writes an OpenAI-format input of chat requests, one per
// prompt, with custom_ids "req-<prompt>".
func writeInput(t *testing.T, path string, prompts []string) {
	var b strings.Builder
	for _, p := range prompts {
		line, err := json.Marshal(map[string]any{
			"custom_id": "req-" + p, "method": "POST", "url": batchfile.URLChatCompletions,
			"body": map[string]any{"model": "gpt-4o-mini", "messages": []map[string]string{{"role": "user", "content": p}}},
		})
		require.NoError(t, err)
		b.Write(line)
		b.WriteByte('\n')
	}
	require.NoError(t, os.WriteFile(path, []byte(b.String()), 0o644))
}

func promptList(n int) []string {
	var ps []string
	for i := range n {
		ps = append(ps, fmt.Sprintf("prompt-%03d", i))
	}
	return ps
}

// results reads an output file: each line's custom_id and its answer's
// text (or its status and error).
func results(t *testing.T, path string) (order []string, answers map[string]string) {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	answers = map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, batchfile.MaxLineBytes)
	for sc.Scan() {
		var r batchfile.Result
		require.NoError(t, json.Unmarshal(sc.Bytes(), &r), sc.Text())
		_, dup := answers[r.CustomID]
		require.False(t, dup, "custom_id %s written twice", r.CustomID)
		order = append(order, r.CustomID)
		switch {
		case r.Error != nil:
			answers[r.CustomID] = "error " + r.Error.Code
		case r.Response.StatusCode != 200:
			answers[r.CustomID] = fmt.Sprintf("status %d", r.Response.StatusCode)
		default:
			var body struct {
				Choices []struct {
					Message struct{ Content string } `json:"message"`
				} `json:"choices"`
				Data []json.RawMessage `json:"data"`
			}
			require.NoError(t, json.Unmarshal(r.Response.Body, &body))
			if len(body.Choices) > 0 {
				answers[r.CustomID] = body.Choices[0].Message.Content
			} else {
				answers[r.CustomID] = fmt.Sprintf("%d embeddings", len(body.Data))
			}
		}
	}
	require.NoError(t, sc.Err())
	return order, answers
}

// TestOpenAIBatchFile: the OpenAI-format file in testdata runs through the
// command, and the output is checked line by line against the format.
func TestOpenAIBatchFile(t *testing.T) {
	srv, env := upstream(t)
	out := filepath.Join(t.TempDir(), "results.jsonl")
	p := start(t, env, "batch", "-in", "../../batchfile/testdata/requests.jsonl", "-out", out, "-concurrency", "3")
	require.Equal(t, 0, p.wait(t, 30*time.Second), p.output())
	assert.Contains(t, p.output(), "6 of 6 requests have a result")

	data, err := os.ReadFile(out)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	require.Len(t, lines, 6)
	ids := map[string]bool{}
	for _, line := range lines {
		var fields map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(line), &fields), line)
		require.Len(t, fields, 4, line)
		var r struct {
			ID       string `json:"id"`
			CustomID string `json:"custom_id"`
			Response struct {
				StatusCode int             `json:"status_code"`
				RequestID  *string         `json:"request_id"`
				Body       json.RawMessage `json:"body"`
			} `json:"response"`
			Error *struct{} `json:"error"`
		}
		require.NoError(t, json.Unmarshal([]byte(line), &r))
		assert.Equal(t, batchfile.ResultID(r.CustomID), r.ID)
		assert.Regexp(t, `^batch_req_[0-9a-f]{24}$`, r.ID)
		assert.Equal(t, 200, r.Response.StatusCode)
		assert.NotNil(t, r.Response.RequestID, "request_id is present, a string")
		assert.Nil(t, r.Error)
		assert.JSONEq(t, "null", string(fields["error"]))
		var body map[string]any
		require.NoError(t, json.Unmarshal(r.Response.Body, &body))
		if strings.HasPrefix(r.CustomID, "embed-") {
			assert.Equal(t, "list", body["object"])
		} else {
			assert.Equal(t, "chat.completion", body["object"])
		}
		ids[r.CustomID] = true
	}
	assert.Len(t, ids, 6)
	assert.Equal(t, 4, srv.Stats().Requests, "four chat requests (embeddings are counted apart)")
}

func TestNoAPIKey(t *testing.T) {
	p := start(t, nil, "batch", "-in", "../../batchfile/testdata/requests.jsonl", "-out", filepath.Join(t.TempDir(), "o.jsonl"))
	assert.Equal(t, 2, p.wait(t, 20*time.Second))
	assert.Contains(t, p.output(), "no API key: set HOLYSHEEP_API_KEY")
}

// TestBadInputSendsNothing: every bad line is named, and nothing is paid
// for.
func TestBadInputSendsNothing(t *testing.T) {
	srv, env := upstream(t)
	dir := t.TempDir()
	in := filepath.Join(dir, "in.jsonl")
	writeInput(t, in, promptList(5))
	f, err := os.OpenFile(in, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"custom_id": "req-prompt-001", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "x"}]}}` + "\n" +
		`{"custom_id": "x", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}` + "\n" + `{"custom_id": "torn`)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	p := start(t, env, "batch", "-in", in, "-out", filepath.Join(dir, "out.jsonl"))
	assert.Equal(t, 2, p.wait(t, 20*time.Second))
	out := p.output()
	assert.Contains(t, out, "nothing was sent")
	assert.Contains(t, out, `in.jsonl:line 6 (custom_id "req-prompt-001"): duplicate custom_id, first on line 2`)
	assert.Contains(t, out, `in.jsonl:line 7 (custom_id "x"): url "/v1/completions" is not supported`)
	assert.Contains(t, out, `in.jsonl:line 8: not a batch request line`)
	assert.Zero(t, srv.Stats().Requests)
}

// TestInsertedLinePaysOnlyForIt: a line inserted in the input, and a
// resumed run, send only that line; the output gets it once.
func TestInsertedLinePaysOnlyForIt(t *testing.T) {
	srv, env := upstream(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	ps := promptList(10)
	writeInput(t, in, ps)
	require.Equal(t, 0, start(t, env, "batch", "-in", in, "-out", out).wait(t, 30*time.Second))
	assert.Equal(t, 10, srv.Stats().Requests)

	ps = append(ps[:4], append([]string{"a-new-prompt"}, ps[4:]...)...)
	writeInput(t, in, ps)
	p := start(t, env, "batch", "-in", in, "-out", out)
	require.Equal(t, 0, p.wait(t, 30*time.Second), p.output())
	assert.Equal(t, 11, srv.Stats().Requests, "only the inserted line was sent")
	assert.Contains(t, p.output(), "11 of 11 requests have a result (10 from earlier runs)")
	order, answers := results(t, out)
	assert.Len(t, order, 11)
	assert.Equal(t, llmtest.Reply("a-new-prompt"), answers["req-a-new-prompt"])
}

// TestMaxTasksStopsAndResumes: -max-tasks stops with exit 3; the next run
// goes on.
func TestMaxTasksStopsAndResumes(t *testing.T) {
	srv, env := upstream(t)
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	writeInput(t, in, promptList(7))
	p := start(t, env, "batch", "-in", in, "-out", out, "-max-tasks", "3", "-concurrency", "2")
	require.Equal(t, 3, p.wait(t, 30*time.Second), p.output())
	assert.Contains(t, p.output(), "stopped at -max-tasks with 4 requests left")
	assert.Equal(t, 3, srv.Stats().Requests)
	require.Equal(t, 0, start(t, env, "batch", "-in", in, "-out", out).wait(t, 30*time.Second))
	assert.Equal(t, 7, srv.Stats().Requests)
}

// TestFailedRequestsWritten: a request the API refuses is written with
// its status and error body; exit 1; a resumed run does not send it again.
func TestFailedRequestsWritten(t *testing.T) {
	srv, env := upstream(t)
	srv.Script(llmtest.Status(400).WithCode("bad_prompt"))
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	writeInput(t, in, []string{"only"})
	p := start(t, env, "batch", "-in", in, "-out", out)
	require.Equal(t, 1, p.wait(t, 30*time.Second), p.output())
	_, answers := results(t, out)
	assert.Equal(t, "status 400", answers["req-only"])
	require.Equal(t, 1, start(t, env, "batch", "-in", in, "-out", out).wait(t, 30*time.Second))
	assert.Equal(t, 1, srv.Stats().Requests)
}

// TestShardsSIGTERMAndMerge is the scenario: four shard processes
// over one input, one of them SIGTERMed mid-way and run again: every
// custom_id is completed exactly once at the server, and the merged output
// equals a single-process run's answers.
func TestShardsSIGTERMAndMerge(t *testing.T) {
	ps := promptList(60)
	dir := t.TempDir()
	in := filepath.Join(dir, "in.jsonl")
	writeInput(t, in, ps)

	// The reference: one process.
	_, env1 := upstream(t)
	single := filepath.Join(dir, "single.jsonl")
	require.Equal(t, 0, start(t, env1, "batch", "-in", in, "-out", single, "-concurrency", "8").wait(t, 60*time.Second))
	singleOrder, singleAnswers := results(t, single)
	require.Len(t, singleOrder, 60)

	srv, env := upstream(t, llmtest.WithLatency(150*time.Millisecond))
	out := filepath.Join(dir, "results.jsonl")
	// Shard 0 takes its index from $JOB_COMPLETION_INDEX, as in an
	// Indexed Job, and is stopped mid-way.
	p0 := start(t, append(env, "JOB_COMPLETION_INDEX=0"), "batch", "-in", in, "-out", out, "-shard", "4", "-concurrency", "2", "-progress", "50ms")
	eventually(t, 20*time.Second, "shard 0 answered some and has some in flight", func() bool {
		st := srv.Stats()
		return st.Succeeded >= 2 && st.InFlight > 0
	})
	require.NoError(t, p0.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 3, p0.wait(t, 30*time.Second), p0.output())
	assert.Contains(t, p0.output(), "run the same command again to resume")
	assert.Contains(t, p0.output(), "done,", "plain progress lines when stderr is not a terminal")
	assert.Equal(t, srv.Stats().Requests, srv.Stats().Succeeded, "the requests in flight at the signal finished")

	procs := make([]*proc, 4)
	for s := range 4 {
		args := []string{"batch", "-in", in, "-out", out, "-shard", fmt.Sprintf("%d/4", s), "-concurrency", "3"}
		procs[s] = start(t, env, args...)
	}
	for s := range 4 {
		require.Equal(t, 0, procs[s].wait(t, 60*time.Second), procs[s].output())
	}
	for _, p := range ps {
		assert.Equal(t, 1, srv.Completed(p), "%s completed exactly once at the server", p)
	}
	assert.Equal(t, 60, srv.Stats().Requests, "no request sent twice")

	shards, err := filepath.Glob(filepath.Join(dir, "results.*-of-4.jsonl"))
	require.NoError(t, err)
	require.Len(t, shards, 4)
	merged := filepath.Join(dir, "merged.jsonl")
	p := start(t, nil, append([]string{"batch", "merge", "-in", in, "-out", merged}, shards...)...)
	require.Equal(t, 0, p.wait(t, 20*time.Second), p.output())
	order, answers := results(t, merged)
	assert.Equal(t, singleAnswers, answers)
	var want []string
	for _, p := range ps {
		want = append(want, "req-"+p)
	}
	assert.Equal(t, want, order, "merged in input order")

	// Without one shard's output, merge names what is missing.
	p = start(t, nil, append([]string{"batch", "merge", "-in", in, "-out", merged}, shards[1:]...)...)
	assert.Equal(t, 1, p.wait(t, 20*time.Second))
	assert.Contains(t, p.output(), "custom_ids have no result:")
}

func TestShardFlag(t *testing.T) {
	for _, c := range []struct {
		flag, index string
		want        llmdrain.Shard
		err         string
	}{
		{"", "", llmdrain.Shard{}, ""},
		{"2/4", "", llmdrain.Shard{Index: 2, Count: 4}, ""},
		{"4", "3", llmdrain.Shard{Index: 3, Count: 4}, ""},
		{"2/4", "2", llmdrain.Shard{Index: 2, Count: 4}, ""},
		{"2/4", "1", llmdrain.Shard{}, "disagrees"},
		{"4", "", llmdrain.Shard{}, "JOB_COMPLETION_INDEX"},
		{"", "1", llmdrain.Shard{}, "-shard is not"},
		{"4/4", "", llmdrain.Shard{}, "want"},
		{"x/4", "", llmdrain.Shard{}, "want"},
	} {
		got, err := parseShard(c.flag, c.index)
		if c.err != "" {
			assert.ErrorContains(t, err, c.err, "%q %q", c.flag, c.index)
			continue
		}
		assert.NoError(t, err)
		assert.Equal(t, c.want, got)
	}
	assert.Equal(t, "dir/results.2-of-4.jsonl", shardPath("dir/results.jsonl", llmdrain.Shard{Index: 2, Count: 4}))
}

// -max-cost stops the batch where the money runs out, exit 3; the same cap
// sends nothing more (the journal counts the earlier run), a larger one
// goes on exactly there. -prices alone reports the cost.
func TestMaxCostStopsAndResumes(t *testing.T) {
	srv, env := upstream(t, llmtest.WithModels("gpt-4o-mini"))
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in.jsonl"), filepath.Join(dir, "out.jsonl")
	writeInput(t, in, promptList(30))
	// The input is free and an answer ("You said: prompt-NNN") is 3
	// tokens, which MaxOutput bounds exactly: $0.000003 a request.
	prices := filepath.Join(dir, "prices.json")
	require.NoError(t, os.WriteFile(prices, []byte(`{"sample_spec": {"max_output_tokens": "doc"},
		"gpt-4o-mini": {"input_cost_per_token": 0, "output_cost_per_token": 1e-06, "max_output_tokens": 3, "mode": "chat"}}`), 0o644))

	p := start(t, env, "batch", "-in", in, "-out", out, "-concurrency", "8", "-prices", prices, "-max-cost", "0.00003")
	require.Equal(t, 3, p.wait(t, 30*time.Second), p.output())
	assert.Contains(t, p.output(), "10 of 30 requests have a result (0 from earlier runs), 0 failed, 20 left, cost $0.000030 in this run")
	assert.Contains(t, p.output(), "stopped at -max-cost 3e-05 (raise it to go on) with 20 requests left")
	assert.Equal(t, 10, srv.Stats().Requests)

	p = start(t, env, "batch", "-in", in, "-out", out, "-prices", prices, "-max-cost", "0.00003")
	require.Equal(t, 3, p.wait(t, 30*time.Second), p.output())
	assert.Equal(t, 10, srv.Stats().Requests, "the journal's spend fills the same cap")

	p = start(t, env, "batch", "-in", in, "-out", out, "-prices", prices, "-max-cost", "0.0001")
	require.Equal(t, 0, p.wait(t, 30*time.Second), p.output())
	assert.Contains(t, p.output(), "30 of 30 requests have a result (10 from earlier runs), 0 failed, 0 left, cost $0.000060 in this run")
	assert.Equal(t, 30, srv.Stats().Requests)
	order, _ := results(t, out)
	assert.Len(t, order, 30)

	p = start(t, env, "batch", "-in", in, "-out", out, "-max-cost", "1")
	assert.Equal(t, 2, p.wait(t, 30*time.Second))
	assert.Contains(t, p.output(), "-max-cost must not be negative, and needs -prices")
	require.NoError(t, os.WriteFile(prices, []byte(`{"gpt-4o-mini": {"input_cost_per_token": "free"}}`), 0o644))
	p = start(t, env, "batch", "-in", in, "-out", out, "-prices", prices)
	assert.Equal(t, 2, p.wait(t, 30*time.Second))
	assert.Contains(t, p.output(), `"gpt-4o-mini": input_cost_per_token: not a number`)
}
