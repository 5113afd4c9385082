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

// bin is the chat command, built once for all tests.
var bin string

func TestMain(m *testing.M) { proctest.Main(m, &bin) }

const testKey = "sk-test-0123456789abcdef-secret"

// upstream is a fake LLM in the test process that requires testKey, so the
// command runs exactly as with a real key, and the env to reach it.
func upstream(t *testing.T, opts ...llmtest.Option) (*llmtest.Server, []string) {
	return proctest.Upstream(t, testKey, opts...)
}

func assertNoKey(t *testing.T, p *proctest.Proc) {
	t.Helper()
	assert.NotContains(t, p.Output(proctest.Stdout), testKey)
	assert.NotContains(t, p.Output(proctest.Stderr), testKey)
}

func TestOfflineAnswer(t *testing.T) {
	p := proctest.Start(t, bin, []string{"FAKE_LLM_LATENCY=0s"}, "why", "is", "the", "sky", "blue?")
	require.Equal(t, 0, p.Wait(10*time.Second))
	assert.Equal(t, llmtest.Reply("why is the sky blue?")+"\n", p.Output(proctest.Stdout))
	assert.Empty(t, p.Output(proctest.Stderr), "no interrupt notice without an interrupt")
}

func TestInterruptWaitsForTheAnswer(t *testing.T) {
	srv, env := upstream(t, llmtest.WithLatency(1500*time.Millisecond))
	p := proctest.Start(t, bin, env, "hello")
	proctest.Eventually(t, 5*time.Second, "call in flight upstream", func() bool { return srv.Stats().InFlight == 1 })

	p.Signal(syscall.SIGINT)
	p.WaitLine(proctest.Stderr, 5*time.Second, "the interrupt notice", func(l string) bool {
		return strings.Contains(l, "waiting up to 30s for the answer")
	})
	require.Equal(t, 0, p.Wait(10*time.Second))
	assert.Equal(t, llmtest.Reply("hello")+"\n", p.Output(proctest.Stdout))
	assert.Equal(t, 1, srv.Completed("hello"))
	assertNoKey(t, p)
}

func TestSecondInterruptAborts(t *testing.T) {
	srv, env := upstream(t)
	srv.Script(llmtest.Hang())
	p := proctest.Start(t, bin, env, "hello")
	proctest.Eventually(t, 5*time.Second, "call in flight upstream", func() bool { return srv.Stats().InFlight == 1 })

	p.Signal(syscall.SIGINT)
	p.WaitLine(proctest.Stderr, 5*time.Second, "the interrupt notice", func(l string) bool {
		return strings.Contains(l, "interrupt again to abort")
	})
	start := time.Now()
	p.Signal(syscall.SIGINT)
	require.Equal(t, 130, p.Wait(5*time.Second))
	assert.Less(t, time.Since(start), 3*time.Second, "a second interrupt must abort at once")
	assert.Empty(t, p.Output(proctest.Stdout))
	assert.Contains(t, p.Output(proctest.Stderr), "aborted")
	assertNoKey(t, p)
}

func TestGraceBoundsTheWait(t *testing.T) {
	srv, env := upstream(t)
	srv.Script(llmtest.Hang())
	p := proctest.Start(t, bin, env, "-grace", "300ms", "hello")
	proctest.Eventually(t, 5*time.Second, "call in flight upstream", func() bool { return srv.Stats().InFlight == 1 })

	p.Signal(syscall.SIGINT)
	require.Equal(t, 130, p.Wait(5*time.Second))
	assert.Contains(t, p.Output(proctest.Stderr), "no answer within the 300ms grace")
}

func TestUpstreamErrorExitsNonZero(t *testing.T) {
	srv, env := upstream(t)
	srv.Script(llmtest.Status(400))
	p := proctest.Start(t, bin, env, "hello")
	require.Equal(t, 1, p.Wait(10*time.Second))
	assert.Empty(t, p.Output(proctest.Stdout))
	assertNoKey(t, p)
}
