package llmdrain

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"go.uber.org/goleak"

	"github.com/llmdrain/llmdrain/llmtest"
)

// soakEnv turns on TestChaosSoakLong: "1" for the default duration, or a
// duration such as "10m". LLMDRAIN_SOAK_SEED fixes the client-side seed
// (the servers' chaos draws still depend on the order requests arrive in).
const (
	soakEnv     = "LLMDRAIN_SOAK"
	soakSeedEnv = "LLMDRAIN_SOAK_SEED"
)

// soakPlan sizes a soak. Rounds run until both rounds and duration are
// used up (a zero duration means rounds only).
type soakPlan struct {
	rounds             int
	duration           time.Duration
	workers            int
	minCalls, maxCalls int // calls started in a round before its drain
	minTotal           int // calls the soak must at least have made
}

// TestChaosSoak fires a little over a thousand plain and streamed calls,
// with random faults and endpoint deaths, at fresh clients drained at
// random moments, and checks every call's outcome. See runSoak.
func TestChaosSoak(t *testing.T) {
	plan := soakPlan{rounds: 6, workers: 12, minCalls: 170, maxCalls: 230, minTotal: 1000}
	if testing.Short() {
		plan = soakPlan{rounds: 3, workers: 8, minCalls: 80, maxCalls: 120, minTotal: 250}
	}
	runSoak(t, plan)
}

// TestChaosSoakLong is the same soak for minutes and many thousands of
// calls. It runs when named explicitly (go test -run TestChaosSoakLong) or
// with LLMDRAIN_SOAK set.
func TestChaosSoakLong(t *testing.T) {
	env := os.Getenv(soakEnv)
	run := flag.Lookup("test.run").Value.String()
	if env == "" && !strings.Contains(run, "SoakLong") {
		t.Skipf("long soak: run with -run TestChaosSoakLong or %s=1 (or a duration)", soakEnv)
	}
	d := 2 * time.Minute
	if env != "" && env != "1" {
		var err error
		if d, err = time.ParseDuration(env); err != nil {
			t.Fatalf("%s=%q: %v", soakEnv, env, err)
		}
	}
	runSoak(t, soakPlan{rounds: 20, duration: d, workers: 32, minCalls: 500, maxCalls: 4000, minTotal: 10000})
}

// chaosEndpoint is an llmtest server that can die and come back on the
// same address, so that a client configured with it sees connection
// refusals and fails over.
type chaosEndpoint struct {
	name string
	addr string
	opts []llmtest.Option

	mu     sync.Mutex
	srv    *llmtest.Server // nil while down
	past   llmtest.Stats   // sums of the servers closed so far
	deaths int

	failedRevivals int
}

func newChaosEndpoint(name string, opts ...llmtest.Option) *chaosEndpoint {
	e := &chaosEndpoint{name: name, opts: opts}
	e.srv = llmtest.NewServer(opts...)
	e.addr = strings.TrimSuffix(strings.TrimPrefix(e.srv.URL, "http://"), "/v1")
	return e
}

func (e *chaosEndpoint) url() string { return "http://" + e.addr + "/v1" }

// kill closes the server: calls in flight on it are cut, new ones refused.
func (e *chaosEndpoint) kill() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv == nil {
		return
	}
	e.srv.Close()
	s := e.srv.Stats()
	e.past.Requests += s.Requests
	e.past.Succeeded += s.Succeeded
	e.past.Faults += s.Faults
	e.past.Streams += s.Streams
	e.past.Other += s.Other
	e.srv = nil
	e.deaths++
}

// revive starts a new server on the dead one's address. Another socket may
// have taken the port meanwhile (an outgoing connection's source port, say):
// then the endpoint stays dead until the next revive, and the clients fail
// over, as they would in production.
func (e *chaosEndpoint) revive() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv != nil {
		return
	}
	defer func() {
		if p := recover(); p != nil { // llmtest.NewServer panics if it cannot listen
			e.failedRevivals++
		}
	}()
	e.srv = llmtest.NewServer(append(e.opts[:len(e.opts):len(e.opts)], llmtest.WithAddr(e.addr))...)
}

func (e *chaosEndpoint) stats() (llmtest.Stats, string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.past
	if e.srv != nil {
		cur := e.srv.Stats()
		s.Requests += cur.Requests
		s.Succeeded += cur.Succeeded
		s.Faults += cur.Faults
		s.Streams += cur.Streams
		s.Other += cur.Other
	}
	deaths := fmt.Sprintf("%d deaths", e.deaths)
	if e.failedRevivals > 0 {
		deaths += fmt.Sprintf(" (%d revivals failed: port taken)", e.failedRevivals)
	}
	return s, deaths
}

// soakTally counts outcomes per call kind, and collects the invariant
// violations the workers find (they never call t themselves, so a hung
// round can fail the test without a late t.Errorf panicking).
type soakTally struct {
	mu       sync.Mutex
	outcomes map[string]map[string]int // outcome -> kind -> count
	problems []string
	calls    int
	drains   map[string]int
	under    int // drains that cancelled calls they did not name
}

func (s *soakTally) add(kind, outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.outcomes[outcome] == nil {
		s.outcomes[outcome] = map[string]int{}
	}
	s.outcomes[outcome][kind]++
	s.calls++
}

func (s *soakTally) problem(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.problems) < 50 {
		s.problems = append(s.problems, fmt.Sprintf(format, args...))
	}
}

// underReported counts a drain whose verdict did not name every call it
// cancelled.
func (s *soakTally) underReported() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.under++
}

func (s *soakTally) drained(outcome string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.drains[outcome]++
}

var soakKinds = []string{"chat", "plain", "stream", "abandon", "models"}

func (s *soakTally) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "%-36s %7s", "outcome", "total")
	for _, k := range soakKinds {
		fmt.Fprintf(&b, " %7s", k)
	}
	b.WriteString("\n")
	names := make([]string, 0, len(s.outcomes))
	for o := range s.outcomes {
		names = append(names, o)
	}
	sort.Strings(names)
	for _, o := range names {
		total := 0
		for _, n := range s.outcomes[o] {
			total += n
		}
		fmt.Fprintf(&b, "%-36s %7d", o, total)
		for _, k := range soakKinds {
			fmt.Fprintf(&b, " %7d", s.outcomes[o][k])
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "%-36s %7d\n", "all calls", s.calls)
	var ds []string
	for d, n := range s.drains {
		ds = append(ds, fmt.Sprintf("%s: %d", d, n))
	}
	sort.Strings(ds)
	fmt.Fprintf(&b, "drains: %s\n", strings.Join(ds, ", "))
	fmt.Fprintf(&b, "drains under-reported (calls cancelled but not named): %d\n", s.under)
	return b.String()
}

// runSoak runs rounds of chaos. Each round makes a new client over two
// chaotic endpoints (the primary and a slower fallback), has workers fire
// calls of every kind at it, kills and revives endpoints part-way, and
// drains the client with a random deadline after a random number of calls.
// On every call it checks that:
//
//   - the call returns within its deadline plus a margin (a watchdog fails
//     the test with a goroutine dump otherwise);
//   - it ends in success with the complete answer (a stream that ends with
//     io.EOF has every word) or in an error of a known kind: ErrDraining,
//     ErrForcedShutdown, a context error, an *openai.APIError with a status
//     the servers send, io.ErrUnexpectedEOF for a cut answer, or a
//     connection error after the retries ran out;
//   - a call started once the drain had begun is refused with ErrDraining.
//
// After every round: the drain returned nil or a *ForcedDrainError with
// every straggler finished, no call ended with ErrForcedShutdown without
// being named in it (the count of such under-reported drains is logged and
// must be 0), and the tracker is back to zero. At the end no
// goroutine is left.
func runSoak(t *testing.T, plan soakPlan) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())

	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(soakSeedEnv); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("%s=%q: %v", soakSeedEnv, s, err)
		}
	}
	t.Logf("seed %d (set %s to repeat the client side)", seed, soakSeedEnv)
	rng := rand.New(rand.NewPCG(seed, 0))

	primary := newChaosEndpoint("primary",
		llmtest.WithAPIKey(fakeKey), llmtest.WithSeed(int64(seed)),
		llmtest.WithLatency(time.Millisecond), llmtest.WithJitter(1),
		llmtest.WithChaos(llmtest.Chaos{RateLimit: 0.06, ServerError: 0.08, Reset: 0.04, Hang: 0.03, Truncate: 0.05, RetryAfter: 5 * time.Millisecond}))
	fallback := newChaosEndpoint("fallback",
		llmtest.WithAPIKey(fakeKey), llmtest.WithSeed(int64(seed)+1),
		llmtest.WithChunkDelay(3*time.Millisecond), // slow streams
		llmtest.WithChaos(llmtest.Chaos{RateLimit: 0.03, ServerError: 0.03, Reset: 0.02, Hang: 0.01, Truncate: 0.03, RetryAfter: 5 * time.Millisecond}))
	defer primary.kill()
	defer fallback.kill()

	// A transport of its own: DefaultTransport keeps only two idle
	// connections per host, and this test must not leave any behind.
	base := &http.Transport{MaxIdleConnsPerHost: 64}
	defer base.CloseIdleConnections()
	hc := &http.Client{Transport: base}

	tally := &soakTally{outcomes: map[string]map[string]int{}, drains: map[string]int{}}
	start := time.Now()
	for round := 0; round < plan.rounds || time.Since(start) < plan.duration; round++ {
		soakRound(t, rng, round, plan, primary, fallback, hc, tally)
		if t.Failed() {
			break
		}
	}

	ps, pd := primary.stats()
	fs, fd := fallback.stats()
	summary := fmt.Sprintf("chaos soak: %d calls in %v\n%s"+
		"primary:  %d requests, %d succeeded, %d faults, %s\n"+
		"fallback: %d requests, %d succeeded, %d faults, %s\n",
		tally.calls, time.Since(start).Round(time.Millisecond), tally,
		ps.Requests, ps.Succeeded, ps.Faults, pd, fs.Requests, fs.Succeeded, fs.Faults, fd)
	t.Log("\n" + summary)
	if testing.Verbose() {
		fmt.Print(summary)
	}
	for _, p := range tally.problems {
		t.Error(p)
	}
	if tally.calls < plan.minTotal {
		t.Errorf("only %d calls made, want at least %d", tally.calls, plan.minTotal)
	}
	if fs.Requests == 0 {
		t.Error("the fallback endpoint was never used: failover not exercised")
	}
	if tally.drains["clean"] == 0 || tally.drains["forced"] == 0 {
		t.Errorf("drains %v: want both clean and forced ones", tally.drains)
	}
}

// soakRound runs one round; see runSoak.
func soakRound(t *testing.T, rng *rand.Rand, round int, plan soakPlan, primary, fallback *chaosEndpoint, hc *http.Client, tally *soakTally) {
	pick := func(ds ...time.Duration) time.Duration { return ds[rng.IntN(len(ds))] }
	wait := pick(0, 0, time.Millisecond)
	cfg := Config{
		APIKey:         fakeKey,
		BaseURL:        primary.url(),
		FallbackURLs:   []string{fallback.url()},
		HTTPClient:     hc,
		Backoff:        func() backoff.BackOff { return backoff.NewConstantBackOff(wait) },
		AttemptTimeout: pick(100*time.Millisecond, 200*time.Millisecond),
		// A 1 s Retry-After is honoured under the larger cap, and ends the
		// call with its 429 at once under the smaller one.
		MaxRetryAfter: pick(300*time.Millisecond, 2*time.Second),
		MaxRetries:    []int{1, 3, 3}[rng.IntN(3)],
		FailoverAfter: 1 + rng.IntN(3),
		MaxConcurrent: []int{0, 0, 4}[rng.IntN(3)],
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("round %d: New: %v", round, err)
	}

	// The events of the round, at numbers of calls started: an endpoint
	// dies and comes back, then the drain begins.
	drainAt := int64(plan.minCalls + rng.IntN(plan.maxCalls-plan.minCalls+1))
	killAt := drainAt * int64(1+rng.IntN(4)) / 10
	reviveAt := killAt + drainAt*int64(1+rng.IntN(3))/10
	victims := [][]*chaosEndpoint{nil, {primary}, {primary}, {fallback}, {primary, fallback}}[rng.IntN(5)]
	// In turn: a drain that outlasts every call's deadline, so it must end
	// clean, then ones forced at once or part-way through.
	drainTimeout := []time.Duration{soakDeadline + 5*time.Second, 0, 20 * time.Millisecond, 200 * time.Millisecond, 2 * time.Millisecond}[round%5]

	var (
		started     atomic.Int64
		forcedCalls atomic.Int64
		events      sync.WaitGroup
		drainMu     sync.Mutex
		drainErr    error
		drainDump   string        // goroutines when a forced drain found calls still running
		drainLate   time.Duration // how much longer they ran; negative: still running
		drained     = make(chan struct{})
		hung        = make(chan string, 1)
		workers     sync.WaitGroup
	)
	revive := make(chan struct{})
	fire := func(n int64) {
		switch n {
		case killAt:
			events.Add(1)
			go func() {
				defer events.Done()
				for _, e := range victims {
					e.kill()
				}
				<-revive
				for _, e := range victims {
					e.revive()
				}
			}()
		case reviveAt:
			close(revive)
		case drainAt:
			go func() {
				defer close(drained)
				ctx, cancel := context.WithTimeout(context.Background(), drainTimeout)
				defer cancel()
				err := c.Shutdown(ctx)
				var fe *ForcedDrainError
				var dump string
				var late time.Duration
				if errors.As(err, &fe) && fe.Unfinished > 0 {
					dump = goroutines()
					late = untilIdle(c.Tracker(), 5*time.Second)
				}
				drainMu.Lock()
				drainErr, drainDump, drainLate = err, dump, late
				drainMu.Unlock()
			}()
		}
	}

	for w := range plan.workers {
		workers.Add(1)
		wrng := rand.New(rand.NewPCG(rng.Uint64(), uint64(w)))
		go func() {
			defer workers.Done()
			for i := 0; ; i++ {
				late := c.Tracker().Draining()
				n := started.Add(1)
				fire(n)
				id := fmt.Sprintf("r%d-w%d-c%d", round, w, i)
				kind, outcome, problem := soakCall(c, wrng, id, hung)
				tally.add(kind, outcome)
				if outcome == outcomeForced {
					forcedCalls.Add(1)
				}
				if problem != "" {
					tally.problem("round %d, %s call %s: %s", round, kind, id, problem)
				}
				if late {
					if outcome != outcomeDraining {
						tally.problem("round %d, %s call %s started while draining ended %q, want ErrDraining", round, kind, id, outcome)
					}
					return
				}
			}
		}()
	}

	allDone := make(chan struct{})
	go func() {
		workers.Wait()
		<-drained
		events.Wait()
		close(allDone)
	}()
	select {
	case <-allDone:
	case dump := <-hung:
		t.Fatalf("round %d: %s", round, dump)
	}

	drainMu.Lock()
	derr, drainDump, drainLate := drainErr, drainDump, drainLate
	drainMu.Unlock()
	var fe *ForcedDrainError
	switch {
	case derr == nil:
		tally.drained("clean")
		if n := forcedCalls.Load(); n != 0 {
			tally.underReported()
			t.Errorf("round %d: the drain was clean but %d calls ended with ErrForcedShutdown", round, n)
		}
	case errors.As(derr, &fe):
		tally.drained("forced")
		// A straggler may yet end otherwise (its answer was complete, say),
		// but no call may end cancelled without being named.
		if n := forcedCalls.Load(); n > int64(len(fe.Stragglers)) {
			tally.underReported()
			t.Errorf("round %d: %d calls ended with ErrForcedShutdown but the drain names %d: %v", round, n, len(fe.Stragglers), derr)
		}
		if !errors.Is(derr, context.DeadlineExceeded) {
			t.Errorf("round %d: forced drain does not match its context's cause: %v", round, derr)
		}
		// A second after the cancel is a short time on a loaded machine:
		// late calls are noted, and a failure only if they seem to ignore
		// the cancel (every call's own deadline is far away).
		switch {
		case fe.Unfinished == 0:
		case drainLate >= 0:
			tally.drained("forced, stragglers late")
			t.Logf("round %d: %d calls ended %v after the forced drain's grace (loaded machine?)", round, fe.Unfinished, drainLate)
		default:
			t.Errorf("round %d: %d calls still running long after the forced cancel: %v\n\ngoroutines at the end of the grace:\n%s", round, fe.Unfinished, derr, drainDump)
		}
	default:
		t.Errorf("round %d: drain: unexpected error %v", round, derr)
	}
	if n := c.Tracker().InFlight(); n != 0 {
		t.Errorf("round %d: tracker has %d calls in flight after the round", round, n)
	}
	if _, err := c.Chat(context.Background(), "after the round"); !errors.Is(err, ErrDraining) {
		t.Errorf("round %d: a call after the drain got %v, want ErrDraining", round, err)
	}
	for _, e := range []*chaosEndpoint{primary, fallback} {
		e.revive()
	}
}

// soakDeadline is most calls' deadline: far longer than any call takes, so
// that a call ignoring a forced drain's cancel stands out.
const soakDeadline = 10 * time.Second

const (
	outcomeDraining = "refused: draining"
	outcomeForced   = "cancelled: forced drain"
)

// soakCall makes one call of a random kind and classifies its outcome. It
// reports a problem for a wrong answer or an unknown error, and sends a
// goroutine dump on hung if the call outlives its deadline by far.
func soakCall(c *Client, rng *rand.Rand, id string, hung chan<- string) (kind, outcome, problem string) {
	deadline := soakDeadline
	if rng.IntN(10) == 0 {
		deadline = time.Duration(1+rng.IntN(40)) * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	kind = soakKinds[pickKind(rng)]
	limit := deadline + 3*time.Second
	watchdog := time.AfterFunc(limit, func() {
		select {
		case hung <- fmt.Sprintf("%s call %s still running %v after it started (deadline %v)\n\ngoroutines:\n%s", kind, id, limit, deadline, goroutines()):
		default:
		}
	})
	defer watchdog.Stop()

	words := make([]string, 2+rng.IntN(10))
	for i := range words {
		words[i] = fmt.Sprintf("w%d", rng.IntN(1000))
	}
	prompt := id + " " + strings.Join(words, " ")
	want := llmtest.Reply(prompt)

	var err error
	switch kind {
	case "chat":
		var text string
		if text, err = c.Chat(ctx, prompt); err == nil && text != want {
			problem = fmt.Sprintf("answer %q, want %q", text, want)
		}
	case "plain":
		var resp openai.ChatCompletionResponse
		if resp, err = c.CreateChatCompletion(ctx, userMsg(prompt)); err == nil {
			if len(resp.Choices) != 1 || resp.Choices[0].Message.Content != want {
				problem = fmt.Sprintf("answer %+v, want %q", resp.Choices, want)
			}
		}
	case "stream", "abandon":
		var text string
		text, err = soakStream(ctx, c, prompt, kind == "abandon")
		if err == nil && kind == "stream" && text != want {
			problem = fmt.Sprintf("stream ended with io.EOF after %q, want %q", text, want)
		}
	case "models":
		_, err = c.OpenAI().ListModels(ctx)
	}
	outcome = classifyCall(ctx, err)
	if outcome == "" {
		problem = fmt.Sprintf("unclassified error %T: %v", err, err)
		outcome = "UNCLASSIFIED"
	}
	return kind, outcome, problem
}

func pickKind(rng *rand.Rand) int {
	switch p := rng.IntN(100); {
	case p < 30:
		return 0 // chat
	case p < 45:
		return 1 // plain
	case p < 85:
		return 2 // stream
	case p < 95:
		return 3 // abandon
	default:
		return 4 // models
	}
}

// soakStream opens a stream and reads it to its end, or, to abandon it,
// reads one event and closes it. A stream read to io.EOF returns nil.
func soakStream(ctx context.Context, c *Client, prompt string, abandon bool) (string, error) {
	s, err := c.CreateChatCompletionStream(ctx, userMsg(prompt))
	if err != nil {
		return "", err
	}
	defer s.Close()
	if !abandon {
		return readStream(s)
	}
	r, err := s.Recv()
	switch {
	case errors.Is(err, io.EOF):
		return "", nil
	case err != nil || len(r.Choices) == 0:
		return "", err
	}
	return r.Choices[0].Delta.Content, nil
}

// classifyCall names the kind of a call's outcome, or returns "" for an error
// of no known kind. ctx is the call's own context.
func classifyCall(ctx context.Context, err error) string {
	var apiErr *openai.APIError
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrDraining):
		return outcomeDraining
	case errors.Is(err, ErrForcedShutdown):
		return outcomeForced
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return "caller deadline"
	case errors.Is(err, context.DeadlineExceeded):
		return "attempt timeouts, retries exhausted"
	case errors.As(err, &apiErr):
		switch code := apiErr.HTTPStatusCode; code {
		case 429, 500, 502, 503, 504:
			return fmt.Sprintf("api error %d", code)
		}
		return ""
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated (io.ErrUnexpectedEOF)"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn refused, retries exhausted"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		// A dying endpoint can cut a connection while the request is
		// still being written: a broken pipe is a reset seen from the
		// writing side.
		return "conn reset, retries exhausted"
	case errors.Is(err, io.EOF), isServerClosedIdle(err):
		return "conn closed, retries exhausted"
	}
	return ""
}

// isServerClosedIdle reports net/http's error for a request sent on a
// pooled connection the server had closed (here, by dying). net/http does
// not export it, and replays it itself for idempotent requests only, never
// for a POST.
func isServerClosedIdle(err error) bool {
	var ue *url.Error
	return errors.As(err, &ue) && strings.HasSuffix(ue.Err.Error(), "http: server closed idle connection")
}

// goroutines dumps every goroutine's stack.
func goroutines() string {
	buf := make([]byte, 8<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// untilIdle waits up to limit for tr to have no call in flight and returns
// how long that took, or -1 if it did not happen.
func untilIdle(tr *Tracker, limit time.Duration) time.Duration {
	start := time.Now()
	for tr.InFlight() != 0 {
		if time.Since(start) > limit {
			return -1
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start)
}

// TestChaosForcedDrainVerdict races sixteen goroutines doing Begin and done
// against a Drain whose context has already ended, round after round, and
// checks the verdict against what the callers saw: every call cancelled
// with ErrForcedShutdown must be named in the *ForcedDrainError (a nil
// verdict with a call cancelled, or fewer stragglers than calls cancelled,
// is an under-reported drain), and no call may be named that was not
// cancelled (over-reported). A call whose Begin raced with the forced
// phase is either named or refused with ErrDraining.
func TestChaosForcedDrainVerdict(t *testing.T) {
	const workers = 16
	minRounds, minTime := 1000, 3*time.Second
	if testing.Short() {
		minRounds, minTime = 500, time.Second
	}
	var rounds, forcedRounds, under, over, cancelledTotal int
	start := time.Now()
	for rounds < minRounds || time.Since(start) < minTime {
		rounds++
		tr := NewTracker()
		var (
			wg        sync.WaitGroup
			begun     atomic.Int64
			cancelled atomic.Int64
		)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					ctx, done, err := tr.Begin(context.Background())
					if err != nil {
						if !errors.Is(err, ErrDraining) {
							panic(err)
						}
						return
					}
					begun.Add(1)
					done()
					// done cancels with context.Canceled, unless the forced
					// phase cancelled the call first: then the cause stays.
					if context.Cause(ctx) == ErrForcedShutdown {
						cancelled.Add(1)
					}
				}
			}()
		}
		for begun.Load() < workers {
			runtime.Gosched()
		}
		expired, cancel := context.WithCancel(context.Background())
		cancel()
		err := tr.Drain(expired)
		wg.Wait()

		named := 0
		var fe *ForcedDrainError
		switch {
		case err == nil:
		case errors.As(err, &fe):
			forcedRounds++
			named = len(fe.Stragglers)
			if fe.Unfinished != 0 {
				t.Logf("round %d: %d calls unfinished after the grace (loaded machine?)", rounds, fe.Unfinished)
			}
		default:
			t.Fatalf("round %d: Drain: unexpected error %v", rounds, err)
		}
		n := int(cancelled.Load())
		cancelledTotal += n
		if n > named {
			under++
		}
		if named > n {
			over++
		}
		if tr.InFlight() != 0 {
			t.Fatalf("round %d: %d calls in flight after the drain", rounds, tr.InFlight())
		}
	}
	t.Logf("%d rounds in %v at GOMAXPROCS=%d: %d forced, %d calls cancelled; %d drains under-reported, %d over-reported",
		rounds, time.Since(start).Round(time.Millisecond), runtime.GOMAXPROCS(0), forcedRounds, cancelledTotal, under, over)
	assert.Zero(t, under, "drains that cancelled calls they did not name")
	assert.Zero(t, over, "drains that named calls they did not cancel")
}
