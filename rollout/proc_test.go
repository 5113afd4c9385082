package rollout

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// proc is a child process of the test: a replica or haproxy. Its output
// goes straight to a file in the test's temporary directory, so no
// goroutine copies it, and the file is shown when the test fails. The
// process is killed, if still running, when the test ends.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{} // closed once Wait has returned
	exit   time.Time     // when Wait returned; read after exited is closed
}

// startProc runs bin with args and exactly env. Output goes to
// dir/name.log.
func startProc(t *testing.T, dir, name string, env []string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), log: filepath.Join(dir, name+".log"), exited: make(chan struct{})}
	f, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the child has its own descriptor
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = childAttr()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait() // the outcome is read from ProcessState
		p.exit = time.Now()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("%s (%s) output, last lines:\n%s", name, p.status(), tail(p.log, 40))
		}
	})
	return p
}

// kill ends the process at once if it is still running and waits for it.
func (p *proc) kill() {
	select {
	case <-p.exited:
	default:
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("%s: signal %v: %v", p.name, sig, err)
	}
}

// wait waits up to timeout for the process to exit. On timeout it kills
// the process and fails the test.
func (p *proc) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		p.kill()
		t.Fatalf("%s did not exit within %v; killed", p.name, timeout)
	}
}

// status describes how the process ended: "exit 0", "signal: terminated",
// or "running".
func (p *proc) status() string {
	select {
	case <-p.exited:
	default:
		return "running"
	}
	if code := p.cmd.ProcessState.ExitCode(); code >= 0 {
		return fmt.Sprintf("exit %d", code)
	}
	return p.cmd.ProcessState.String()
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// freePorts returns n loopback ports that were free a moment ago. The
// listeners are closed before returning, so another process could take a
// port in between; on a test machine that race is accepted. The ports are
// chosen up front because a restarted replica must come back on its own.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	ports := make([]int, n)
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return ports
}

// childEnv is the test's environment without anything that would change
// how the children behave (a developer's real API key above all), plus
// extra.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "HOLYSHEEP_"), strings.HasPrefix(name, "FAKE_LLM_"),
			name == "ADDR", name == "DRAIN_DELAY", name == "DRAIN_TIMEOUT", name == "LOG_LEVEL", name == "GORACE":
		default:
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// poll calls cond every 10 ms until it holds or timeout passes, and
// reports whether it held. A process exiting meanwhile (exited closed)
// stops the wait early.
func poll(timeout time.Duration, exited <-chan struct{}, cond func() bool) bool {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if cond() {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-exited:
			return cond()
		case <-tick.C:
		}
	}
}

func getStatus(c *http.Client, url string) int {
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
