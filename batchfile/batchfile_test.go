package batchfile

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

const testKey = "sk-batchfile-test-0123456789"

func newClient(t *testing.T, srv *llmtest.Server, cfg llmdrain.Config) *llmdrain.Client {
	t.Helper()
	cfg.APIKey, cfg.BaseURL = testKey, srv.URL
	c, err := llmdrain.New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Shutdown(context.Background()) })
	return c
}

func newServer(t *testing.T) *llmtest.Server {
	srv := llmtest.NewServer(llmtest.WithAPIKey(testKey))
	t.Cleanup(srv.Close)
	return srv
}

// run streams an input through BatchSeq into an output file.
func run(t *testing.T, c *llmdrain.Client, input, output string) *llmdrain.BatchResult {
	t.Helper()
	in, err := os.Open(input)
	require.NoError(t, err)
	defer in.Close()
	out, err := OpenOutput(output)
	require.NoError(t, err)
	res, err := c.BatchSeq(context.Background(), Tasks(in), llmdrain.BatchOptions{Concurrency: 3}, func(r llmdrain.TaskResult) error {
		if line, ok := ResultOf(r); ok {
			return out.Write(line)
		}
		return nil
	})
	require.NoError(t, out.Close())
	require.NoError(t, err)
	return res
}

// TestOpenAIFormatRoundTrip: the OpenAI-format input in testdata runs,
// and every output line has exactly the fields of OpenAI's output format.
func TestOpenAIFormatRoundTrip(t *testing.T) {
	srv := newServer(t)
	c := newClient(t, srv, llmdrain.Config{})
	out := filepath.Join(t.TempDir(), "results.jsonl")
	sum, err := Check(mustOpen(t, "testdata/requests.jsonl"), llmdrain.Shard{})
	require.NoError(t, err)
	assert.Equal(t, 6, sum.Tasks)
	res := run(t, c, "testdata/requests.jsonl", out)
	assert.Equal(t, 6, res.Completed)

	seen := map[string]bool{}
	for _, raw := range readLines(t, out) {
		var line map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &line))
		assert.ElementsMatch(t, []string{"id", "custom_id", "response", "error"}, keys(line))
		assert.JSONEq(t, "null", string(line["error"]))
		var id, customID string
		require.NoError(t, json.Unmarshal(line["id"], &id))
		require.NoError(t, json.Unmarshal(line["custom_id"], &customID))
		assert.True(t, strings.HasPrefix(id, "batch_req_"))
		seen[customID] = true
		var resp map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(line["response"], &resp))
		assert.ElementsMatch(t, []string{"status_code", "request_id", "body"}, keys(resp))
		assert.JSONEq(t, "200", string(resp["status_code"]))
		var body struct {
			Object  string `json:"object"`
			Choices []struct {
				Message struct{ Content string } `json:"message"`
			} `json:"choices"`
			Data  []struct{ Embedding []float32 } `json:"data"`
			Usage struct {
				TotalTokens int `json:"total_tokens"`
			} `json:"usage"`
		}
		require.NoError(t, json.Unmarshal(resp["body"], &body))
		assert.Positive(t, body.Usage.TotalTokens)
		if strings.HasPrefix(customID, "embed-") {
			assert.Equal(t, "list", body.Object)
			assert.NotEmpty(t, body.Data)
		} else {
			assert.Equal(t, "chat.completion", body.Object)
			require.Len(t, body.Choices, 1)
			content := body.Choices[0].Message.Content
			if customID == "request-4" { // response_format json_object: the answer is JSON
				var obj map[string]string
				require.NoError(t, json.Unmarshal([]byte(content), &obj), "%q", content)
				content = obj["reply"]
			}
			assert.True(t, strings.HasPrefix(content, "You said: "), "%s: %q", customID, content)
		}
	}
	assert.Len(t, seen, 6)
}

func TestCheckNamesEveryBadLine(t *testing.T) {
	good := `{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}`
	input := strings.Join([]string{
		good,
		`{"custom_id": "b", "method": "POST", "url": "/v1/responses", "body": {"model": "m", "input": "hi"}}`,
		`not json`,
		good, // duplicate custom_id "a"
		`{"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "prompt": "hi"}}`,
		`{"custom_id": "d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}`,
		`{"custom_id": "e", "method": "GET", "url": "/v1/chat/completions", "body": {}}`,
		`{"custom_id": "f", "method": "POST", "url": "/v1/embeddings", "body": {"input": "x"}}`,
		`{"custom_id": "g", "method": "POST", "url": "/v1/chat/completions", "body": "hello"}`,
		``,
		`{"method": "POST", "url": "/v1/chat/completions", "body": {}}`,
		`{"custom_id": "h", "method": "POST", "url": "/v1/chat/com`, // torn
	}, "\n")
	sum, err := Check(strings.NewReader(input), llmdrain.Shard{})
	require.ErrorIs(t, err, ErrInvalid)
	assert.Equal(t, 1, sum.Tasks)
	msg := err.Error()
	for _, want := range []string{
		`line 2 (custom_id "b"): url "/v1/responses" is not supported`,
		`line 3: not a batch request line`,
		`line 4 (custom_id "a"): duplicate custom_id, first on line 1`,
		`line 5 (custom_id "c"): body is not a chat completion request: json: unknown field "prompt"`,
		`line 6 (custom_id "d"): body has no "messages"`,
		`line 7 (custom_id "e"): method "GET"`,
		`line 8 (custom_id "f"): embeddings body has no "model"`,
		`line 9 (custom_id "g"): "body" is not a JSON object`,
		`line 11: no "custom_id"`,
		`line 12: not a batch request line`,
	} {
		assert.Contains(t, msg, want)
	}
}

// TestResultOfFailures: an error status is a response with that status
// and the error body; no answer at all is an error with a null response.
func TestResultOfFailures(t *testing.T) {
	srv := newServer(t)
	c := newClient(t, srv, llmdrain.Config{MaxRetries: -1})
	srv.Script(llmtest.Status(400).WithCode("invalid_prompt"), llmtest.Reset())
	res, err := c.Batch(context.Background(), []llmdrain.Task{{ID: "bad", Prompt: "p1"}}, llmdrain.BatchOptions{Concurrency: 1})
	require.NoError(t, err)
	line, ok := ResultOf(res.Results[0])
	require.True(t, ok)
	require.NotNil(t, line.Response)
	assert.Nil(t, line.Error)
	assert.Equal(t, 400, line.Response.StatusCode)
	var body struct {
		Error struct{ Message, Code string } `json:"error"`
	}
	require.NoError(t, json.Unmarshal(line.Response.Body, &body))
	assert.Equal(t, "invalid_prompt", body.Error.Code)
	assert.NotEmpty(t, body.Error.Message)

	res, err = c.Batch(context.Background(), []llmdrain.Task{{ID: "reset", Prompt: "p2"}}, llmdrain.BatchOptions{})
	require.NoError(t, err)
	line, ok = ResultOf(res.Results[0])
	require.True(t, ok)
	assert.Nil(t, line.Response)
	require.NotNil(t, line.Error)
	assert.Equal(t, CodeRequestFailed, line.Error.Code)
	b, err := json.Marshal(line)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"response":null`)
	assert.NotContains(t, string(b), testKey)

	_, ok = ResultOf(llmdrain.TaskResult{ID: "x", Status: llmdrain.StatusNotRun})
	assert.False(t, ok, "a task not run has no line")
	_, ok = ResultOf(llmdrain.TaskResult{ID: "x", Status: llmdrain.StatusCompleted, Resumed: true})
	assert.False(t, ok, "a resumed task's line was written before")
}

// TestOutputResume: reopening an output cuts a torn last line, knows the
// custom_ids written, and never writes one twice.
func TestOutputResume(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.jsonl")
	o, err := OpenOutput(path)
	require.NoError(t, err)
	require.NoError(t, o.Write(Result{ID: ResultID("a"), CustomID: "a", Error: &Error{Code: "x"}}))
	require.NoError(t, o.Write(Result{ID: ResultID("b"), CustomID: "b", Error: &Error{Code: "x"}}))
	require.NoError(t, o.Write(Result{ID: ResultID("a"), CustomID: "a", Error: &Error{Code: "again"}}))
	require.NoError(t, o.Close())
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"id": "batch_req_1", "custom_id": "c", "resp`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	o, err = OpenOutput(path)
	require.NoError(t, err)
	assert.Equal(t, 2, o.Len())
	assert.Positive(t, o.Torn())
	assert.True(t, o.Has("a"))
	assert.False(t, o.Has("c"), "the torn line's task runs again")
	require.NoError(t, o.Write(Result{ID: ResultID("c"), CustomID: "c", Error: &Error{Code: "x"}}))
	require.NoError(t, o.Write(Result{ID: ResultID("b"), CustomID: "b", Error: &Error{Code: "again"}}))
	require.NoError(t, o.Close())
	lines := readLines(t, path)
	require.Len(t, lines, 3)
	assert.NotContains(t, string(bytes.Join(lines, nil)), "again")

	foreign := filepath.Join(t.TempDir(), "notes.txt")
	require.NoError(t, os.WriteFile(foreign, []byte("my notes\n"), 0o644))
	_, err = OpenOutput(foreign)
	assert.ErrorContains(t, err, "line 1 is not a batch result")
}

func TestMerge(t *testing.T) {
	dir := t.TempDir()
	input := strings.Join([]string{
		`{"custom_id": "r1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "1"}}`,
		`{"custom_id": "r2", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "2"}}`,
		`{"custom_id": "r3", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "3"}}`,
		`{"custom_id": "r4", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": "4"}}`,
	}, "\n")
	write := func(name string, ids ...string) string {
		path := filepath.Join(dir, name)
		o, err := OpenOutput(path)
		require.NoError(t, err)
		for _, id := range ids {
			require.NoError(t, o.Write(Result{ID: ResultID(id), CustomID: id, Error: &Error{Code: id}}))
		}
		require.NoError(t, o.Close())
		return path
	}
	a := write("a.jsonl", "r3", "r1")
	b := write("b.jsonl", "r4", "zz")
	var buf bytes.Buffer
	rep, err := Merge(strings.NewReader(input), []string{a, b}, &buf)
	require.NoError(t, err)
	assert.Equal(t, []string{"r2"}, rep.Missing)
	assert.Equal(t, 3, rep.Written)
	assert.Equal(t, 1, rep.Extra)
	var order []string
	for _, l := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
		var r Result
		require.NoError(t, json.Unmarshal(l, &r))
		order = append(order, r.CustomID)
	}
	assert.Equal(t, []string{"r1", "r3", "r4"}, order)

	c := write("c.jsonl", "r1")
	_, err = Merge(strings.NewReader(input), []string{a, c}, &buf)
	assert.ErrorContains(t, err, `custom_id "r1" has results in`)
}

func mustOpen(t *testing.T, path string) *os.File {
	f, err := os.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, MaxLineBytes)
	for sc.Scan() {
		out = append(out, bytes.Clone(sc.Bytes()))
	}
	require.NoError(t, sc.Err())
	return out
}

func keys(m map[string]json.RawMessage) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
