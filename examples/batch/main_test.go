package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/examples/internal/proctest"
	"github.com/llmdrain/llmdrain/llmtest"
)

// bin is the batch command, built once for all tests.
var bin string

func TestMain(m *testing.M) { proctest.Main(m, &bin) }

const testKey = "sk-test-0123456789abcdef-secret"

// upstream is a fake LLM in the test process that requires testKey, so the
// command runs exactly as with a real key, and the env to reach it.
func upstream(t *testing.T, opts ...llmtest.Option) (*llmtest.Server, []string) {
	return proctest.Upstream(t, testKey, opts...)
}

func writeFile(t *testing.T, name, content string) string {
	path := filepath.Join(t.TempDir(), name)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
	return path
}

func prompts(n int) []string {
	var ps []string
	for i := range n {
		ps = append(ps, fmt.Sprintf("prompt number %d", i+1))
	}
	return ps
}

// summaryCount reads one row of the summary table.
func summaryCount(t *testing.T, out, row string) int {
	t.Helper()
	m := regexp.MustCompile(`(?m)^  ` + row + `\s+(\d+)`).FindStringSubmatch(out)
	require.NotNil(t, m, "no %q row in:\n%s", row, out)
	n, _ := strconv.Atoi(m[1])
	return n
}

type answerLine struct{ ID, Status, Text, Error string }

func readAnswers(t *testing.T, path string) []answerLine {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var as []answerLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var a answerLine
		require.NoError(t, json.Unmarshal(sc.Bytes(), &a))
		as = append(as, a)
	}
	return as
}

func TestPlainLines(t *testing.T) {
	srv, env := upstream(t)
	ps := prompts(10)
	input := writeFile(t, "prompts.txt", strings.Join(ps[:5], "\n")+"\n\n"+strings.Join(ps[5:], "\n")+"\n")
	out := filepath.Join(t.TempDir(), "answers.jsonl")
	p := proctest.Start(t, bin, env, "-concurrency", "3", "-out", out, input)
	require.Equal(t, 0, p.Wait(20*time.Second))

	stdout := p.Output(proctest.Stdout)
	assert.Equal(t, 10, summaryCount(t, stdout, "completed"))
	assert.Zero(t, summaryCount(t, stdout, "failed"))
	assert.Zero(t, summaryCount(t, stdout, "not run"))
	assert.Positive(t, summaryCount(t, stdout, "tokens"))
	assert.Contains(t, p.Output(proctest.Stderr), "10/10 done", "the final progress line")
	answers := readAnswers(t, out)
	require.Len(t, answers, 10)
	for i, a := range answers {
		assert.Equal(t, "completed", a.Status)
		assert.Equal(t, llmtest.Reply(ps[i]), a.Text, "answers in input order")
		assert.Equal(t, 1, srv.Completed(ps[i]))
	}
	assert.FileExists(t, input+".journal")
	assert.NotContains(t, p.Output(proctest.Stderr)+stdout, testKey)
}

func TestJSONLines(t *testing.T) {
	_, env := upstream(t)
	input := writeFile(t, "prompts.jsonl",
		`{"id": "greeting", "prompt": "hello"}`+"\n"+`{"prompt": "with a model", "model": "gpt-4o-mini"}`+"\n")
	out := filepath.Join(t.TempDir(), "answers.jsonl")
	p := proctest.Start(t, bin, env, "-out", out, input)
	require.Equal(t, 0, p.Wait(20*time.Second))
	answers := readAnswers(t, out)
	require.Len(t, answers, 2)
	assert.Equal(t, answerLine{ID: "greeting", Status: "completed", Text: llmtest.Reply("hello")}, answers[0])
	assert.Equal(t, llmtest.Reply("with a model"), answers[1].Text)

	bad := writeFile(t, "bad.jsonl", `{"promt": "typo"}`+"\n")
	p = proctest.Start(t, bin, env, bad)
	assert.Equal(t, 2, p.Wait(20*time.Second))
	assert.Contains(t, p.Output(proctest.Stderr), `bad.jsonl:1`)
}

// TestInterruptAndResume is the scenario: Ctrl-C mid-batch lets
// the running prompts finish, and the same command resumes without sending
// any prompt twice.
func TestInterruptAndResume(t *testing.T) {
	srv, env := upstream(t, llmtest.WithLatency(300*time.Millisecond))
	ps := prompts(12)
	input := writeFile(t, "prompts.txt", strings.Join(ps, "\n")+"\n")

	p := proctest.Start(t, bin, env, "-concurrency", "2", input)
	proctest.Eventually(t, 10*time.Second, "two prompts answered and two in flight", func() bool {
		st := srv.Stats()
		return st.Succeeded >= 2 && st.InFlight == 2
	})
	p.Signal(syscall.SIGINT)
	require.Equal(t, 130, p.Wait(20*time.Second))
	first := p.Output(proctest.Stdout)
	completed, notRun := summaryCount(t, first, "completed"), summaryCount(t, first, "not run")
	assert.GreaterOrEqual(t, completed, 4, "the prompts in flight at the signal finished")
	assert.Positive(t, notRun)
	assert.Equal(t, 12, completed+notRun)
	assert.Zero(t, summaryCount(t, first, "failed"))
	assert.Equal(t, completed, srv.Stats().Succeeded, "every prompt sent was answered in full")
	assert.Contains(t, p.Output(proctest.Stderr), "run the same command again to resume")

	p = proctest.Start(t, bin, env, "-concurrency", "2", input)
	require.Equal(t, 0, p.Wait(20*time.Second))
	second := p.Output(proctest.Stdout)
	assert.Equal(t, 12, summaryCount(t, second, "completed"))
	assert.Contains(t, second, fmt.Sprintf("%d answered in an earlier run", completed))
	for _, prompt := range ps {
		assert.Equal(t, 1, srv.Completed(prompt), "%q answered exactly once over both runs", prompt)
	}
	assert.Equal(t, 12, srv.Stats().Requests, "no prompt was sent twice")
}

func TestFailedPrompt(t *testing.T) {
	srv, env := upstream(t)
	srv.Script(llmtest.Status(400))
	input := writeFile(t, "prompts.txt", "only one\n")
	p := proctest.Start(t, bin, env, input)
	require.Equal(t, 1, p.Wait(20*time.Second))
	out := p.Output(proctest.Stdout)
	assert.Equal(t, 1, summaryCount(t, out, "failed"))
	assert.Contains(t, out, "failed 0-")
}

func TestOffline(t *testing.T) {
	input := writeFile(t, "prompts.txt", "one\ntwo\nthree\n")
	p := proctest.Start(t, bin, []string{"FAKE_LLM_LATENCY=0s"}, input)
	require.Equal(t, 0, p.Wait(20*time.Second))
	assert.Equal(t, 3, summaryCount(t, p.Output(proctest.Stdout), "completed"))
	assert.NotContains(t, p.Output(proctest.Stderr), "interrupted", "no interrupt notice without an interrupt")
}
