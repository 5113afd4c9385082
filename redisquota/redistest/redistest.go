// Package redistest starts a real redis-server for tests and benchmarks, on
// a free loopback port, and lets them kill, pause and restart it.
//
// It is to redisquota what llmtest is to llmdrain: the Redis under test is
// the real one (the Debian package redis-server), not a fake, so a test of
// "Redis died mid-run" sees the connection errors a service would see.
// Nothing is persisted: the server runs with no RDB snapshots and no AOF in
// a temporary directory, so a restarted server starts empty, as a Redis
// that lost its memory does.
package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrNotInstalled is returned by Start when no redis-server binary is found
// in $PATH, /usr/bin or /usr/sbin.
var ErrNotInstalled = errors.New("redistest: redis-server not installed")

// StartTimeout bounds how long Start and Restart wait for the server to
// accept connections.
const StartTimeout = 10 * time.Second

// Server is one redis-server process on 127.0.0.1. Its methods are safe for
// concurrent use.
type Server struct {
	// Addr is the server's host:port; it stays the same across Restart.
	Addr string

	bin, dir string
	port     int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited and been waited for
	out  *tailBuffer
}

// Start starts a redis-server on a free port of 127.0.0.1 and returns once
// it accepts connections. Close stops it and removes its directory.
func Start() (*Server, error) {
	bin, err := lookBin()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "redistest-")
	if err != nil {
		return nil, fmt.Errorf("redistest: %w", err)
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), bin: bin, dir: dir, port: port}
	if err := s.start(); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return s, nil
}

// New starts a server for a test and stops it when the test ends. Without
// redis-server installed the test is skipped, unless $CI is set, where it
// fails: CI installs redis-server, so its absence there is a defect.
func New(tb testing.TB) *Server {
	tb.Helper()
	s, err := Start()
	if errors.Is(err, ErrNotInstalled) && os.Getenv("CI") == "" {
		tb.Skip("redis-server not installed (apt-get install redis-server)")
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Error(err)
		}
	})
	return s
}

func lookBin() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/sbin/redis-server"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", ErrNotInstalled
}

// freePort asks the kernel for a free port. Another process could take it
// before redis-server binds it; Start then fails with redis-server's own
// message rather than talking to the wrong server.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("redistest: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs redis-server and waits for its "Ready to accept connections"
// log line: an event, not a poll.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("redistest: server already running")
	}
	cmd := exec.Command(s.bin,
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--daemonize", "no",
		"--logfile", "",
		"--loglevel", "notice",
		"--protected-mode", "yes",
	)
	cmd.SysProcAttr = sysProcAttr()
	pr, pw := io.Pipe()
	cmd.Stdout = pw
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("redistest: starting %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	out := &tailBuffer{max: 4096}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			out.add(line)
			if !signalled && strings.Contains(line, "Ready to accept connections") {
				signalled = true
				close(ready)
			}
		}
		io.Copy(io.Discard, pr) // a line too long for the scanner: keep draining
	}()
	go func() {
		cmd.Wait()
		pw.Close()
		close(done)
	}()
	select {
	case <-ready:
	case <-done:
		return fmt.Errorf("redistest: redis-server exited before it was ready: %s", out.String())
	case <-time.After(StartTimeout):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("redistest: redis-server not ready after %v: %s", StartTimeout, out.String())
	}
	s.cmd, s.done, s.out = cmd, done, out
	return nil
}

// Kill kills the server with SIGKILL, as a crash or an OOM kill would, and
// returns once the process has exited: from then on connections to Addr are
// refused. Killing a stopped server is a no-op.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.killLocked()
}

func (s *Server) killLocked() error {
	if s.cmd == nil {
		return nil
	}
	// SIGKILL works on a paused (SIGSTOPped) process too.
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("redistest: killing redis-server: %w", err)
	}
	<-s.done
	s.cmd = nil
	return nil
}

// Restart starts a server again on the same Addr after Kill. It starts
// empty: every key the old one held is gone.
func (s *Server) Restart() error { return s.start() }

// Pause stops the server with SIGSTOP: connections stay open and accepted
// but nothing is answered, as with a Redis stuck in a long command or a
// network that drops packets. Resume undoes it.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume continues a paused server with SIGCONT.
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig os.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return errors.New("redistest: server not running")
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("redistest: signalling redis-server: %w", err)
	}
	return nil
}

// Close kills the server and removes its directory. It may be called more
// than once.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.killLocked()
	if rerr := os.RemoveAll(s.dir); rerr != nil && err == nil {
		err = fmt.Errorf("redistest: %w", rerr)
	}
	return err
}

// tailBuffer keeps the last lines of the server's log for error messages.
type tailBuffer struct {
	mu    sync.Mutex
	max   int
	lines []string
	size  int
}

func (b *tailBuffer) add(line string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, line)
	b.size += len(line) + 1
	for b.size > b.max && len(b.lines) > 1 {
		b.size -= len(b.lines[0]) + 1
		b.lines = b.lines[1:]
	}
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}
