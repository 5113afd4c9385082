package llmdrain

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

func probe(t *testing.T, h http.Handler) int {
	t.Helper()
	rec := &statusRecorder{header: http.Header{}, code: http.StatusOK}
	h.ServeHTTP(rec, &http.Request{})
	return rec.code
}

type statusRecorder struct {
	header http.Header
	code   int
}

func (r *statusRecorder) Header() http.Header         { return r.header }
func (r *statusRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *statusRecorder) WriteHeader(code int)        { r.code = code }

// TestShutdownSequence drives the whole sequence with Trigger and checks
// its order: readiness off, the delay, then the drains in registration
// order, each seeing the shared deadline.
func TestShutdownSequence(t *testing.T) {
	sd := &Shutdown{Delay: 100 * time.Millisecond, Timeout: 10 * time.Second}
	var mu sync.Mutex
	var events []string
	var triggeredAt time.Time
	record := func(name string) func(context.Context) error {
		return func(ctx context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			_, hasDeadline := ctx.Deadline()
			events = append(events, fmt.Sprintf("%s ready=%d deadline=%v", name, probe(t, sd.ReadyHandler()), hasDeadline))
			if name == "first" {
				assert.GreaterOrEqual(t, time.Since(triggeredAt), sd.Delay, "drains start after the delay")
			}
			return nil
		}
	}
	sd.Register("first", record("first"))
	sd.Register("second", record("second"))

	assert.Equal(t, 200, probe(t, sd.ReadyHandler()))
	assert.Equal(t, 200, probe(t, sd.LiveHandler()))
	assert.False(t, sd.ShuttingDown())

	mu.Lock()
	triggeredAt = time.Now()
	mu.Unlock()
	sd.Trigger()
	require.NoError(t, sd.Run(context.Background()))
	assert.Equal(t, []string{"first ready=503 deadline=true", "second ready=503 deadline=true"}, events)
	assert.True(t, sd.ShuttingDown())
	assert.Equal(t, 200, probe(t, sd.LiveHandler()), "liveness stays up while draining")
}

func TestShutdownContextEndStarts(t *testing.T) {
	sd := &Shutdown{}
	ran := false
	sd.Register("x", func(context.Context) error { ran = true; return nil })
	stopping := sd.Stopping()
	select {
	case <-stopping:
		t.Fatal("Stopping closed before the shutdown began")
	default:
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, sd.Run(ctx))
	assert.True(t, ran)
	<-stopping // closed by now
	assert.Error(t, sd.Run(ctx), "Run is meant to be called once")
}

func TestShutdownStoppingBeforeDrains(t *testing.T) {
	sd := &Shutdown{Delay: time.Hour}
	var closedFirst bool
	sd.Register("x", func(context.Context) error {
		select {
		case <-sd.Stopping():
			closedFirst = true
		default:
		}
		return nil
	})
	done := make(chan error, 1)
	go func() { done <- sd.Run(context.Background()) }()
	sd.Trigger()
	<-sd.Stopping() // closed at the trigger, during the hour-long delay
	sd.Trigger()    // force: cuts the delay short
	assert.ErrorIs(t, <-done, ErrForcedShutdown)
	assert.True(t, closedFirst)
}

func TestShutdownTimeoutForcesStragglers(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	c := newTestClient(t, srv, Config{})
	errc := make(chan error, 1)
	go func() { _, err := c.Chat(context.Background(), "hang"); errc <- err }()
	waitInFlight(t, srv, 1)

	sd := &Shutdown{Timeout: 50 * time.Millisecond}
	sd.Register("llm", c.Shutdown)
	sd.Trigger()
	err := sd.Run(context.Background())
	var fe *ForcedDrainError
	require.ErrorAs(t, err, &fe)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), `drain "llm"`)
	assert.ErrorIs(t, <-errc, ErrForcedShutdown)
}

func TestShutdownSecondTriggerForces(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	c := newTestClient(t, srv, Config{})
	errc := make(chan error, 1)
	go func() { _, err := c.Chat(context.Background(), "hang"); errc <- err }()
	waitInFlight(t, srv, 1)

	sd := &Shutdown{Delay: time.Hour, Timeout: time.Hour}
	sd.Register("llm", c.Shutdown)
	sd.Trigger()
	done := make(chan error, 1)
	go func() { done <- sd.Run(context.Background()) }()
	waitFor(t, sd.ShuttingDown)
	sd.Trigger()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, ErrForcedShutdown)
	case <-time.After(10 * time.Second):
		t.Fatal("a second trigger did not force the shutdown")
	}
	assert.ErrorIs(t, <-errc, ErrForcedShutdown)
}

// TestShutdownServerThenClient runs a real HTTP server whose handler makes
// an LLM call: the server drains first (the handler finishes its call and
// answers 200), then the client drains with nothing left.
func TestShutdownServerThenClient(t *testing.T) {
	llm := newServer(t, llmtest.WithLatency(200*time.Millisecond))
	c := newTestClient(t, llm, Config{})
	mux := http.NewServeMux()
	sd := &Shutdown{Timeout: 10 * time.Second}
	mux.Handle("/readyz", sd.ReadyHandler())
	mux.HandleFunc("/generate", func(w http.ResponseWriter, r *http.Request) {
		text, err := c.Chat(r.Context(), "from a handler")
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, text)
	})
	srv := &http.Server{Handler: mux}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(ln) }()
	sd.RegisterServer("http", srv)
	sd.Register("llm", c.Shutdown)

	base := "http://" + ln.Addr().String()
	hc := &http.Client{Transport: &http.Transport{}}
	defer hc.CloseIdleConnections()
	type answer struct {
		code int
		body string
		err  error
	}
	answers := make(chan answer, 1)
	go func() {
		resp, err := hc.Get(base + "/generate")
		if err != nil {
			answers <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		answers <- answer{resp.StatusCode, string(b), err}
	}()
	waitInFlight(t, llm, 1)
	sd.Trigger()
	require.NoError(t, sd.Run(context.Background()))
	<-served
	a := <-answers
	require.NoError(t, a.err)
	assert.Equal(t, 200, a.code)
	assert.Equal(t, llmtest.Reply("from a handler"), a.body)
	_, err = hc.Get(base + "/readyz")
	assert.Error(t, err, "the listener is closed after the drain")
}

// The signal tests run this test binary again as a child process with
// childEnv set; runChild is its main.
const childEnv = "LLMDRAIN_TEST_CHILD"

func runChild(mode string) int {
	if mode == "batch" {
		return runBatchChild()
	}
	if mode == "stubborn" {
		return runStubbornChild()
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	c, err := New(Config{APIKey: fakeKey, BaseURL: os.Getenv("LLMDRAIN_TEST_URL"), Logger: logger})
	if err != nil {
		fmt.Println("NEW:", err)
		return 2
	}
	sd := &Shutdown{Timeout: time.Minute, Logger: logger}
	sd.Register("llm", c.Shutdown)
	sd.Notify() // from here on a SIGTERM is kept for Run
	logger.Info("signals watched")

	result := make(chan string, 1)
	go func() {
		text, err := c.Chat(context.Background(), "child "+mode)
		if err != nil {
			result <- fmt.Sprintf("ERROR: forced=%v: %v", errors.Is(err, ErrForcedShutdown), err)
			return
		}
		result <- "RESULT: " + text
	}()
	if mode == "early" {
		// The parent signals before Run has started: Notify kept it.
		logger.Info("calling without Run")
		fmt.Println(<-result)
	}
	err = sd.Run(context.Background())
	if mode != "early" {
		fmt.Println(<-result)
	}
	_, lateErr := c.Chat(context.Background(), "late")
	fmt.Println("LATE REFUSED:", errors.Is(lateErr, ErrDraining))
	if err != nil {
		fmt.Println("SHUTDOWN:", err)
		return 3
	}
	return 0
}

// runStubbornChild runs a Shutdown whose drain ignores its context, under
// a one-minute timeout: a second signal must make Run return within
// ShutdownGrace, and a third, after Run, must kill the process.
func runStubbornChild() int {
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	sd := &Shutdown{Timeout: time.Minute, Logger: logger}
	sd.Register("stubborn", func(context.Context) error { select {} })
	err := sd.Run(context.Background())
	fmt.Println("SHUTDOWN:", err)
	logger.Info("run returned", "forced", errors.Is(err, ErrForcedShutdown))
	time.Sleep(time.Minute) // until a signal kills the process
	return 0
}

type child struct {
	cmd    *exec.Cmd
	stdout strings.Builder
	lines  chan string // stderr, line by line
	exited chan struct{}
	err    error
}

func startChild(t *testing.T, mode, url string) *child {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	ch := &child{cmd: exec.Command(exe, "-test.run=^$"), lines: make(chan string, 100), exited: make(chan struct{})}
	ch.cmd.Env = append(os.Environ(), childEnv+"="+mode, "LLMDRAIN_TEST_URL="+url)
	ch.cmd.Stdout = &ch.stdout
	stderr, err := ch.cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, ch.cmd.Start())
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			select {
			case ch.lines <- sc.Text():
			default: // nobody waits for more; keep draining the pipe
			}
		}
	}()
	go func() {
		<-scanned
		ch.err = ch.cmd.Wait()
		close(ch.exited)
	}()
	t.Cleanup(func() {
		_ = ch.cmd.Process.Kill()
		<-ch.exited
	})
	return ch
}

// waitLine waits for a stderr line containing s.
func (ch *child) waitLine(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l := <-ch.lines:
			if strings.Contains(l, s) {
				return
			}
		case <-timeout:
			// The child writes stdout until it exits: end it first, so
			// that reading what it wrote is no data race.
			_ = ch.cmd.Process.Kill()
			<-ch.exited
			t.Fatalf("child never logged %q; stdout: %s", s, ch.stdout.String())
		}
	}
}

func (ch *child) wait(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case <-ch.exited:
	case <-time.After(within):
		t.Fatalf("child still running after %v", within)
	}
	var ee *exec.ExitError
	if errors.As(ch.err, &ee) {
		return ee.ExitCode()
	}
	require.NoError(t, ch.err)
	return 0
}

// TestSIGTERMLetsCallFinish sends SIGTERM to a child process with a call in
// flight: the call completes, a later call is refused, the child exits 0.
// In mode "early" the child has called Notify but not yet Run: the signal
// must be kept for Run, not kill the process.
func TestSIGTERMLetsCallFinish(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	for mode, ready := range map[string]string{
		"sigterm": "waiting for a signal",
		"early":   "calling without Run",
	} {
		t.Run(mode, func(t *testing.T) {
			srv := newServer(t, llmtest.WithLatency(400*time.Millisecond))
			ch := startChild(t, mode, srv.URL)
			ch.waitLine(t, ready)
			waitInFlight(t, srv, 1)

			require.NoError(t, ch.cmd.Process.Signal(syscall.SIGTERM))
			code := ch.wait(t, 30*time.Second)
			out := ch.stdout.String()
			assert.Equal(t, 0, code, "stdout: %s", out)
			assert.Contains(t, out, "RESULT: "+llmtest.Reply("child "+mode))
			assert.Contains(t, out, "LATE REFUSED: true")
			assert.Equal(t, 1, settled(t, srv).Completed("child "+mode))
			assert.Equal(t, 1, srv.Stats().Requests, "the late call never reached the server")
		})
	}
}

func TestSecondSIGTERMForcesExit(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	ch := startChild(t, "force", srv.URL)
	ch.waitLine(t, "waiting for a signal")
	waitInFlight(t, srv, 1)

	require.NoError(t, ch.cmd.Process.Signal(syscall.SIGTERM))
	ch.waitLine(t, "shutdown: signal received")
	require.NoError(t, ch.cmd.Process.Signal(syscall.SIGTERM))
	start := time.Now()
	code := ch.wait(t, 20*time.Second)
	out := ch.stdout.String()
	assert.Equal(t, 3, code, "stdout: %s", out)
	assert.Less(t, time.Since(start), 10*time.Second, "forced well before the one-minute timeout")
	assert.Contains(t, out, "ERROR: forced=true")
	assert.NotContains(t, out, "FAKE")
}

// runBounded runs sd.Run in a goroutine and waits for it at most within;
// a panic out of Run is returned as a failure too. unblock is called, if
// Run has not returned in time, to let it return before the test ends.
func runBounded(t *testing.T, sd *Shutdown, within time.Duration, unblock func()) (time.Duration, error) {
	t.Helper()
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{panic: p}
			}
		}()
		done <- result{err: sd.Run(context.Background())}
	}()
	select {
	case r := <-done:
		if r.panic != nil {
			t.Fatalf("Run panicked: %v", r.panic)
		}
		return time.Since(start), r.err
	case <-time.After(within):
		unblock()
		<-done
		t.Fatalf("Run still running %v after the trigger (Timeout %v, ShutdownGrace %v)", within, sd.Timeout, ShutdownGrace)
		return 0, nil
	}
}

// TestShutdownForcesRemainingDrainsTogether registers three drains that
// each hold a call which ignores its cancellation. The first uses the whole
// timeout; at the timeout the other two must be forced with it, not each
// spend its own forced-phase grace in turn (that took 3.1 s for a 100 ms
// timeout).
func TestShutdownForcesRemainingDrainsTogether(t *testing.T) {
	sd := &Shutdown{Timeout: 100 * time.Millisecond}
	var dones []func()
	for _, name := range []string{"a", "b", "c"} {
		tr := NewTracker()
		_, done, err := tr.Begin(context.Background())
		require.NoError(t, err)
		dones = append(dones, done)
		sd.Register(name, tr.Drain)
	}
	defer func() {
		for _, done := range dones {
			done()
		}
	}()
	sd.Trigger()
	took, err := runBounded(t, sd, 10*time.Second, func() {})
	bound := sd.Timeout + ShutdownGrace + time.Second // a second of slack for a loaded machine
	assert.Less(t, took, bound, "Run must return within Timeout + ShutdownGrace")
	t.Logf("Run took %v (Timeout %v, ShutdownGrace %v)", took, sd.Timeout, ShutdownGrace)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	for _, name := range []string{"a", "b", "c"} {
		assert.Contains(t, err.Error(), fmt.Sprintf("drain %q", name))
	}
}

// TestShutdownAbandonsDrainIgnoringContext registers a drain that ignores
// its context. Run must still return, ShutdownGrace after the timeout,
// naming the drain that would not stop, and run the drains after it.
func TestShutdownAbandonsDrainIgnoringContext(t *testing.T) {
	sd := &Shutdown{Timeout: 50 * time.Millisecond}
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock()
	returned := make(chan struct{})
	sd.Register("stubborn", func(context.Context) error {
		defer close(returned)
		<-release
		return nil
	})
	var afterCtxErr error
	sd.Register("after", func(ctx context.Context) error { afterCtxErr = ctx.Err(); return nil })
	sd.Trigger()
	took, err := runBounded(t, sd, 10*time.Second, unblock)
	assert.Less(t, took, sd.Timeout+ShutdownGrace+time.Second)
	assert.GreaterOrEqual(t, took, sd.Timeout+ShutdownGrace, "the stubborn drain gets the whole grace")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `drain "stubborn" did not return within`)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.NotContains(t, err.Error(), `drain "after"`)
	assert.ErrorIs(t, afterCtxErr, context.DeadlineExceeded, "the drain after it ran, forced")
	unblock()
	<-returned // the abandoned drain's goroutine ends once it returns
}

// TestShutdownRecoversPanickingDrain: a drain that panics is reported as
// that drain's error, with the panic value, and the drains after it run.
func TestShutdownRecoversPanickingDrain(t *testing.T) {
	sd := &Shutdown{Timeout: 10 * time.Second}
	errBoom := errors.New("boom error")
	var ran []string
	sd.Register("server", func(context.Context) error { ran = append(ran, "server"); panic("boom") })
	sd.Register("worker", func(context.Context) error { ran = append(ran, "worker"); panic(errBoom) })
	sd.Register("llm", func(context.Context) error { ran = append(ran, "llm"); return nil })
	sd.Trigger()
	_, err := runBounded(t, sd, 10*time.Second, func() {})
	assert.Equal(t, []string{"server", "worker", "llm"}, ran, "every drain runs, in order")
	require.Error(t, err)
	assert.Contains(t, err.Error(), `drain "server": panicked: boom`)
	assert.Contains(t, err.Error(), `drain "worker": panicked: boom error`)
	assert.ErrorIs(t, err, errBoom)
	assert.NotContains(t, err.Error(), `"llm"`)
}

// TestShutdownLateRegister: a drain registered while Run drains is run
// (after the others, or at once and forced past the timeout); one
// registered after Run has returned is run at once, in Register, forced.
func TestShutdownLateRegister(t *testing.T) {
	t.Run("during", func(t *testing.T) {
		sd := &Shutdown{Timeout: 10 * time.Second}
		var ran []string
		sd.Register("first", func(context.Context) error {
			ran = append(ran, "first")
			sd.Register("late", func(ctx context.Context) error {
				ran = append(ran, "late")
				return ctx.Err()
			})
			return nil
		})
		sd.Register("second", func(context.Context) error { ran = append(ran, "second"); return nil })
		sd.Trigger()
		_, err := runBounded(t, sd, 10*time.Second, func() {})
		require.NoError(t, err)
		assert.Equal(t, []string{"first", "second", "late"}, ran)
	})
	t.Run("forced", func(t *testing.T) {
		sd := &Shutdown{Timeout: 20 * time.Millisecond}
		lateRan := make(chan error, 1)
		sd.Register("first", func(ctx context.Context) error {
			<-ctx.Done()
			sd.Register("late", func(ctx context.Context) error {
				lateRan <- ctx.Err()
				return nil
			})
			// Still running: the late drain must not wait for this one.
			select {
			case err := <-lateRan:
				lateRan <- err
				return nil
			case <-time.After(10 * time.Second):
				return errors.New("the late drain did not start while this one ran")
			}
		})
		sd.Trigger()
		_, err := runBounded(t, sd, 15*time.Second, func() {})
		assert.NoError(t, err)
		select {
		case err := <-lateRan:
			assert.ErrorIs(t, err, context.DeadlineExceeded, "run forced")
		default:
			t.Error("the late drain never ran")
		}
	})
	t.Run("after", func(t *testing.T) {
		sd := &Shutdown{}
		sd.Trigger()
		_, err := runBounded(t, sd, 10*time.Second, func() {})
		require.NoError(t, err)
		var cause error
		sd.Register("after", func(ctx context.Context) error { cause = context.Cause(ctx); return nil })
		assert.ErrorIs(t, cause, ErrForcedShutdown, "run at once, in Register, forced")
	})
}

// TestSecondSIGTERMAbandonsStubbornDrain sends two SIGTERMs to a child
// whose drain ignores its context: Run must return ShutdownGrace after the
// second, naming the drain, and give the signals back their default
// action, so that a third SIGTERM kills the process.
func TestSecondSIGTERMAbandonsStubbornDrain(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	ch := startChild(t, "stubborn", "")
	ch.waitLine(t, "waiting for a signal")
	require.NoError(t, ch.cmd.Process.Signal(syscall.SIGTERM))
	ch.waitLine(t, "shutdown: signal received")
	require.NoError(t, ch.cmd.Process.Signal(syscall.SIGTERM))
	start := time.Now()
	ch.waitLine(t, `msg="run returned" forced=true`)
	assert.Less(t, time.Since(start), ShutdownGrace+2*time.Second, "Run returns ShutdownGrace after the second signal")

	require.NoError(t, ch.cmd.Process.Signal(syscall.SIGTERM))
	ch.wait(t, 20*time.Second)
	ws, ok := ch.cmd.ProcessState.Sys().(syscall.WaitStatus)
	require.True(t, ok)
	assert.True(t, ws.Signaled() && ws.Signal() == syscall.SIGTERM, "a third SIGTERM has its default action; exit status %v", ch.cmd.ProcessState)
	assert.Contains(t, ch.stdout.String(), `drain "stubborn" did not return within`)
}
