// Package proctest runs an example as the real process a user would run:
// it builds the binary, starts it with a clean environment, waits for lines
// of its output, signals it and collects its exit code. It is for the
// examples' tests only.
package proctest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

// Main is a TestMain for an example's tests: it builds the example, stores
// the binary's path in *bin, and runs the tests under
// goleak.VerifyTestMain, removing the binary afterwards.
func Main(m *testing.M, bin *string) {
	path, cleanup, err := Build()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin = path
	goleak.VerifyTestMain(cleanupAfter{m, cleanup})
}

type cleanupAfter struct {
	m       *testing.M
	cleanup func()
}

func (c cleanupAfter) Run() int {
	defer c.cleanup()
	return c.m.Run()
}

// Build compiles the main package in the current directory (a test's
// package directory) into a fresh temporary directory, with the race
// detector when the test binary has it. It is meant for TestMain; the
// caller must call cleanup.
func Build() (bin string, cleanup func(), err error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", nil, fmt.Errorf("proctest: the go command is needed to build the example: %w", err)
	}
	dir, err := os.MkdirTemp("", "example-")
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	wd, err := os.Getwd()
	if err != nil {
		cleanup()
		return "", nil, err
	}
	bin = filepath.Join(dir, filepath.Base(wd))
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command(goTool, append(args, ".")...).CombinedOutput()
	if err != nil {
		cleanup()
		return "", nil, fmt.Errorf("proctest: go build: %w\n%s", err, out)
	}
	return bin, cleanup, nil
}

// scrubbed are removed from the child's environment so that a developer's
// real key never turns a test into billed calls; tests set them
// explicitly, through Start's env, and Upstream makes the values.
var scrubbed = []string{llmdrain.EnvAPIKey + "=", llmdrain.EnvBaseURL + "=", "NO_COLOR=", "FAKE_LLM_"}

// Upstream starts a fake LLM that requires key and stands in for the real
// endpoint, and returns it with the env that makes an example use it as
// such: HOLYSHEEP_API_KEY=key and HOLYSHEEP_BASE_URL=its URL. The example
// then runs exactly as with a real key, without a network. The server is
// closed when the test ends.
func Upstream(t testing.TB, key string, opts ...llmtest.Option) (*llmtest.Server, []string) {
	t.Helper()
	srv := llmtest.NewServer(append(opts, llmtest.WithAPIKey(key))...)
	t.Cleanup(srv.Close)
	return srv, []string{llmdrain.EnvAPIKey + "=" + key, llmdrain.EnvBaseURL + "=" + srv.URL}
}

// envProblem says what is wrong with a child's env that sets an API key
// without a loopback base URL, with which the example would call the real
// endpoint; "" when nothing is.
func envProblem(env []string) string {
	var key, base string
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case llmdrain.EnvAPIKey:
			key = v
		case llmdrain.EnvBaseURL:
			base = v
		}
	}
	if key == "" {
		return ""
	}
	u, err := url.Parse(base)
	if err != nil || u.Hostname() == "" {
		return fmt.Sprintf("proctest: %s is set without a valid %s: the example would call the real API; use Upstream",
			llmdrain.EnvAPIKey, llmdrain.EnvBaseURL)
	}
	if ip := net.ParseIP(u.Hostname()); u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Sprintf("proctest: %s=%s is not a loopback address: tests must not reach a real API; use Upstream",
			llmdrain.EnvBaseURL, u.Redacted())
	}
	return ""
}

// Proc is a running example process.
type Proc struct {
	t   testing.TB
	cmd *exec.Cmd

	mu      sync.Mutex
	out     [2][]string   // stdout and stderr lines so far
	partial [2]string     // stdout bytes after the last newline
	changed chan struct{} // closed and replaced at every new line

	readers sync.WaitGroup
	exited  chan struct{}
	waitErr error
}

// Stream names one of the process's outputs.
type Stream int

// The process's outputs.
const (
	Stdout Stream = iota
	Stderr
)

// String names the stream.
func (s Stream) String() string { return [...]string{"stdout", "stderr"}[s] }

// Start runs bin with args and env added to the test's environment (minus
// the HolySheep and fake-LLM variables, which only env can set). An env
// that sets HOLYSHEEP_API_KEY must point HOLYSHEEP_BASE_URL at a loopback
// address, such as Upstream's. The process is killed, if still running,
// when the test ends.
func Start(t testing.TB, bin string, env []string, args ...string) *Proc {
	t.Helper()
	if problem := envProblem(env); problem != "" {
		t.Fatal(problem)
	}
	p := &Proc{t: t, cmd: exec.Command(bin, args...), changed: make(chan struct{}), exited: make(chan struct{})}
	for _, kv := range os.Environ() {
		if !hasAnyPrefix(kv, scrubbed) {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	if raceEnabled && os.Getenv("GORACE") == "" {
		// A race-enabled binary otherwise sleeps a second before exiting;
		// a race it finds still makes it exit 66.
		p.cmd.Env = append(p.cmd.Env, "GORACE=atexit_sleep_ms=0")
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.readers.Add(2)
	go p.read(Stdout, stdout)
	go p.read(Stderr, stderr)
	go func() {
		// Wait closes the pipes, so the readers must have seen EOF first.
		p.readers.Wait()
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s stdout:\n%s", filepath.Base(bin), p.Output(Stdout))
			t.Logf("%s stderr:\n%s", filepath.Base(bin), p.Output(Stderr))
		}
	})
	return p
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// read splits r into lines. It reads whatever has arrived rather than
// whole lines, so that a partial line (a streamed word) is visible at once.
func (p *Proc) read(s Stream, r io.Reader) {
	defer p.readers.Done()
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			p.mu.Lock()
			text := p.partial[s] + string(buf[:n])
			for {
				line, rest, ok := strings.Cut(text, "\n")
				if !ok {
					break
				}
				p.out[s] = append(p.out[s], line)
				text = rest
			}
			p.partial[s] = text
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// Output returns everything s has written so far.
func (p *Proc) Output(s Stream) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.out[s] {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	b.WriteString(p.partial[s])
	return b.String()
}

// Lines returns the complete lines s has written so far.
func (p *Proc) Lines(s Stream) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.out[s]...)
}

// WaitOutput waits until what s has written so far, partial line included,
// satisfies ok, and fails the test if that takes longer than timeout or the
// process exits first.
func (p *Proc) WaitOutput(s Stream, timeout time.Duration, what string, ok func(out string) bool) string {
	p.t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		changed := p.changed
		p.mu.Unlock()
		if out := p.Output(s); ok(out) {
			return out
		}
		select {
		case <-changed:
		case <-p.exited:
			if out := p.Output(s); ok(out) {
				return out
			}
			p.t.Fatalf("process exited (%v) before %s showed %s", p.waitErr, s, what)
		case <-deadline.C:
			p.t.Fatalf("%s did not show %s within %v", s, what, timeout)
		}
	}
}

// WaitLine waits for a complete line of s that satisfies match and returns
// it; it fails the test after timeout or if the process exits first.
func (p *Proc) WaitLine(s Stream, timeout time.Duration, what string, match func(line string) bool) string {
	p.t.Helper()
	var found string
	p.WaitOutput(s, timeout, what, func(string) bool {
		for _, l := range p.Lines(s) {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	})
	return found
}

// Pid is the process's ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Proc) Signal(sig syscall.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %v: %v", sig, err)
	}
}

// Wait waits for the process to exit and returns its exit code (-1 if a
// signal killed it). It kills the process and fails the test if it has not
// exited within timeout.
func (p *Proc) Wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
		p.t.Fatalf("process did not exit within %v; killed", timeout)
	}
	var ee *exec.ExitError
	if p.waitErr != nil && !errors.As(p.waitErr, &ee) {
		p.t.Fatalf("waiting for the process: %v", p.waitErr)
	}
	return p.cmd.ProcessState.ExitCode()
}

// Eventually polls cond every few milliseconds until it holds, and fails the
// test if it does not within timeout. It is for state that announces no
// event, such as a fake LLM's count of requests in flight.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
