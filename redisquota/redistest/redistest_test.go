package redistest_test

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/llmdrain/llmdrain/redisquota/redistest"
)

// ping sends PING over a fresh connection and returns the reply line.
func ping(addr string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func TestServerLifecycle(t *testing.T) {
	s := redistest.New(t)
	if got, err := ping(s.Addr, 2*time.Second); err != nil || got != "+PONG" {
		t.Fatalf("ping after Start = %q, %v; want +PONG", got, err)
	}

	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if _, err := ping(s.Addr, 2*time.Second); err == nil {
		t.Fatal("ping after Kill succeeded; want connection refused")
	}

	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if got, err := ping(s.Addr, 2*time.Second); err != nil || got != "+PONG" {
		t.Fatalf("ping after Restart = %q, %v; want +PONG", got, err)
	}

	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	_, err := ping(s.Addr, 200*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("ping while paused: %v; want a timeout", err)
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	if got, err := ping(s.Addr, 2*time.Second); err != nil || got != "+PONG" {
		t.Fatalf("ping after Resume = %q, %v; want +PONG", got, err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := ping(s.Addr, 2*time.Second); err == nil {
		t.Fatal("ping after Close succeeded")
	}
}
