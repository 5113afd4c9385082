package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/examples/internal/proctest"
	"github.com/llmdrain/llmdrain/llmtest"
)

// bin is the stream command, built once for all tests.
var bin string

func TestMain(m *testing.M) { proctest.Main(m, &bin) }

const testKey = "sk-test-0123456789abcdef-secret"

// upstream is a fake LLM in the test process that requires testKey, so the
// command runs exactly as with a real key, and the env to reach it.
func upstream(t *testing.T, opts ...llmtest.Option) (*llmtest.Server, []string) {
	return proctest.Upstream(t, testKey, opts...)
}

const prompt = "one two three four five six seven eight"

func TestOfflineStream(t *testing.T) {
	p := proctest.Start(t, bin, []string{"FAKE_LLM_LATENCY=0s", "FAKE_LLM_CHUNK_DELAY=0s"}, prompt)
	require.Equal(t, 0, p.Wait(10*time.Second))
	assert.Equal(t, llmtest.Reply(prompt)+"\n", p.Output(proctest.Stdout))
	assert.Empty(t, p.Output(proctest.Stderr), "no signal notice without a signal")
}

func TestSIGTERMLetsTheStreamFinish(t *testing.T) {
	srv, env := upstream(t, llmtest.WithChunkDelay(100*time.Millisecond))
	p := proctest.Start(t, bin, env, prompt)
	p.WaitOutput(proctest.Stdout, 5*time.Second, "the first words", func(out string) bool {
		return strings.HasPrefix(out, "You said:")
	})

	p.Signal(syscall.SIGTERM)
	require.Equal(t, 0, p.Wait(10*time.Second))
	assert.Equal(t, llmtest.Reply(prompt)+"\n", p.Output(proctest.Stdout), "the whole answer, after the signal")
	assert.Contains(t, p.Output(proctest.Stderr), "letting the answer finish")
	assert.Equal(t, 1, srv.Completed(prompt))
	assert.NotContains(t, p.Output(proctest.Stderr), testKey)
}

func TestTruncatedStreamIsNotSuccess(t *testing.T) {
	srv, env := upstream(t)
	srv.Script(llmtest.Truncate(2))
	p := proctest.Start(t, bin, env, prompt)
	require.Equal(t, 3, p.Wait(10*time.Second))
	out := p.Output(proctest.Stdout)
	assert.NotContains(t, out, llmtest.Reply(prompt))
	assert.True(t, strings.HasPrefix(llmtest.Reply(prompt), out), "what was printed is the start of the answer: %q", out)
	assert.Contains(t, p.Output(proctest.Stderr), "truncated")
	assert.Zero(t, srv.Completed(prompt))
}

func TestSecondSignalAborts(t *testing.T) {
	_, env := upstream(t, llmtest.WithChunkDelay(time.Second))
	p := proctest.Start(t, bin, env, prompt)
	p.WaitOutput(proctest.Stdout, 5*time.Second, "the first words", func(out string) bool {
		return strings.HasPrefix(out, "You")
	})
	p.Signal(syscall.SIGTERM)
	p.WaitLine(proctest.Stderr, 5*time.Second, "the signal notice", func(l string) bool {
		return strings.Contains(l, "signal again to abort")
	})
	start := time.Now()
	p.Signal(syscall.SIGTERM)
	require.Equal(t, 130, p.Wait(5*time.Second))
	assert.Less(t, time.Since(start), 3*time.Second, "a second signal must abort at once")
	assert.Contains(t, p.Output(proctest.Stderr), "aborted: answer incomplete")
}
