package main

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/examples/internal/proctest"
)

// bin is the demo command, built once for all tests.
var bin string

func TestMain(m *testing.M) { proctest.Main(m, &bin) }

var summary = regexp.MustCompile(`(?m)^summary: (\d+) calls, (\d+) completed, (\d+) refused, (\d+) lost$`)

// TestDemo runs the demo as `go run ./examples/demo` would, output piped,
// and checks its account adds up.
func TestDemo(t *testing.T) {
	start := time.Now()
	p := proctest.Start(t, bin, nil)
	code := p.Wait(30 * time.Second)
	took := time.Since(start)
	out := p.Output(proctest.Stdout)

	require.Equal(t, 0, code, "exit code")
	m := summary.FindStringSubmatch(out)
	require.NotNil(t, m, "no summary line")
	n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
	calls, completed, refused, lost := n(1), n(2), n(3), n(4)
	assert.Equal(t, numCalls, calls)
	assert.Zero(t, lost)
	assert.Equal(t, calls, completed+refused, "every call completed or was refused")
	assert.Positive(t, completed)
	assert.Positive(t, refused)
	assert.Contains(t, out, "completed during the drain")
	assert.Contains(t, out, "nothing was lost")
	assert.Regexp(t, `SIGTERM at \d+\.\d+s with [1-9]\d* of them in flight`, out)
	assert.NotContains(t, out, "\x1b[", "no colour when piped")
	assert.Empty(t, p.Output(proctest.Stderr))
	assert.Less(t, took, 15*time.Second, "the demo must finish in under 15s")
}

func TestUseColor(t *testing.T) {
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	assert.False(t, useColor(w), "a pipe")

	tty, err := os.OpenFile("/dev/null", os.O_WRONLY, 0) // a character device, like a terminal
	require.NoError(t, err)
	defer tty.Close()
	t.Setenv("NO_COLOR", "")
	assert.True(t, useColor(tty))
	t.Setenv("NO_COLOR", "1")
	assert.False(t, useColor(tty), "NO_COLOR")

	p := newPrinter(w, true)
	assert.Equal(t, "\x1b[32mok\x1b[0m", p.paint(green, "ok"))
	assert.Equal(t, "ok", newPrinter(w, false).paint(green, "ok"))
}
