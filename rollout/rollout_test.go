package rollout

import (
	"cmp"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/internal/serversettings"
	"github.com/llmdrain/llmdrain/llmtest"
)

// The rollout. A replica is restarted like a RollingUpdate pod with
// maxUnavailable 0 would be, one at a time: SIGTERM, wait for the load
// balancer to mark it down and for it to exit, start its replacement on the
// same port, wait until the load balancer has it up again, let it take
// traffic for settle, go on with the next one.
const (
	replicas = 3
	rounds   = 3 // restarts per replica
	workers  = 6 // concurrent clients, each one request at a time
	warmup   = time.Second
	settle   = time.Second

	// drainDelay is the server's DRAIN_DELAY: longer than haproxy needs
	// to mark a replica down (about checkFall*checkInter), so that no
	// request is routed to it once it stops accepting connections.
	drainDelay   = time.Second
	drainTimeout = 10 * time.Second

	testKey = "sk-rollout-0123456789abcdef"
)

// The upstream fake LLM: plain answers in 0.3 to 0.9 s, streams of 1 to 3 s
// (one word every chunkDelay after the latency), a couple of 429s before
// every restart, which the replicas' llmdrain clients retry.
const (
	upstreamLatency = 600 * time.Millisecond
	upstreamJitter  = 0.5
	chunkDelay      = 80 * time.Millisecond
)

// variant is the replica program a scenario rolls.
type variant struct {
	name   string
	bin    string
	env    []string
	drains bool // the real server: assert that nothing is lost
}

// outcome is what a scenario measured, for the table.
type outcome struct {
	name      string
	results   []result
	restarts  int
	shutdowns int
	inFlight  int // requests the load balancer had on a replica when it got SIGTERM, summed
	faults    int // faults the upstream injected (429s)
	// refused are requests the upstream itself turned down: answered 429
	// on every attempt the replica's client made. A rate limit, not a
	// restart, so they are counted apart from the failures.
	refused []result
	// cutUpstream counts LLM calls that ended upstream neither answered
	// in full nor with an injected fault: calls a replica abandoned.
	cutUpstream int
	markDown    []time.Duration
	exitTook    []time.Duration
	exits       map[string]int // how replicas ended: "exit 0", "signal: terminated"
	elapsed     time.Duration
}

// TestRollingRestart rolls three replicas of examples/server behind
// haproxy three times over under load, and then the naive control the same
// way. With the real server every request must succeed in full and every
// replica exit 0 within its drain; the control must lose requests, or the
// scenario proves nothing. The figures of both are printed as a table.
func TestRollingRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute of rolling restarts under load; skipped with -short")
	}
	haproxy := findHAProxy(t)
	bins := build(t, "../examples/server", "./naive")

	variants := []variant{
		{name: "examples/server", bin: bins[0], drains: true, env: []string{
			serversettings.EnvDrainDelay + "=" + drainDelay.String(),
			serversettings.EnvDrainTimeout + "=" + drainTimeout.String(),
		}},
		{name: "naive control", bin: bins[1]},
	}
	var outs []*outcome
	for _, v := range variants {
		out := &outcome{name: v.name, exits: map[string]int{}}
		outs = append(outs, out)
		t.Run(strings.ReplaceAll(v.name, "/", "_"), func(t *testing.T) { rollingRestart(t, haproxy, v, out) })
	}
	table := report(outs)
	t.Log("\n" + table)
	if testing.Verbose() {
		fmt.Print("\n" + table + "\n")
	}
}

// build compiles the commands in dirs (relative to this package; each
// built in its own directory, since examples/server is a module of its
// own) once, without the race detector, to keep them quick (the test
// itself runs under -race in CI), and returns their paths in order.
func build(t *testing.T, dirs ...string) []string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build the replicas: %v", err)
	}
	out := t.TempDir()
	bins := make([]string, len(dirs))
	for i, d := range dirs {
		bins[i] = filepath.Join(out, filepath.Base(d))
		cmd := exec.Command(goTool, "build", "-o", bins[i], ".")
		cmd.Dir = d
		// -mod=mod: examples/server replaces the library with ../..,
		// so a new library dependency needs no go.sum update there first.
		cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
		if msg, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build in %s: %v\n%s", d, err, msg)
		}
	}
	return bins
}

// cluster is one scenario's processes: the replicas and haproxy.
type cluster struct {
	t        *testing.T
	v        variant
	dir      string
	env      []string
	ports    []int
	procs    []*proc
	gen      []int
	statsURL string
	probe    *http.Client // one connection per request: nothing stays open
	out      *outcome
	begin    time.Time
}

func rollingRestart(t *testing.T, haproxy string, v variant, out *outcome) {
	begin := time.Now()
	up := llmtest.NewServer(llmtest.WithAPIKey(testKey), llmtest.WithSeed(1),
		llmtest.WithLatency(upstreamLatency), llmtest.WithJitter(upstreamJitter), llmtest.WithChunkDelay(chunkDelay))
	t.Cleanup(up.Close) // registered first: closed after every process is gone

	ports := freePorts(t, replicas+2)
	front, stats := ports[0], ports[1]
	probeTr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(probeTr.CloseIdleConnections)
	c := &cluster{
		t: t, v: v, dir: t.TempDir(), ports: ports[2:], procs: make([]*proc, replicas), gen: make([]int, replicas),
		env: childEnv(append([]string{
			"HOLYSHEEP_API_KEY=" + testKey, "HOLYSHEEP_BASE_URL=" + up.URL, serversettings.EnvLogLevel + "=info",
		}, v.env...)...),
		statsURL: fmt.Sprintf("http://127.0.0.1:%d/stats", stats),
		probe:    &http.Client{Transport: probeTr, Timeout: 2 * time.Second},
		out:      out, begin: begin,
	}
	for i := range replicas {
		c.startReplica(i)
	}
	lb := startHAProxy(t, haproxy, c.dir, haproxyConfig(front, stats, c.ports))
	for i := range replicas {
		c.waitServer(i, "up", server.up)
	}

	l := startLoad(fmt.Sprintf("http://127.0.0.1:%d/v1/generate", front), workers, begin)
	t.Cleanup(l.kill) // after a failure: runs before the processes are killed
	time.Sleep(warmup)
	for round := range rounds {
		for i := range replicas {
			if round%2 == 0 {
				up.Script(llmtest.RateLimitedMS(50*time.Millisecond), llmtest.RateLimited(time.Second))
			} else {
				up.Script(llmtest.RateLimited(0), llmtest.RateLimitedMS(200*time.Millisecond))
			}
			c.restart(i)
			time.Sleep(settle)
		}
	}
	out.results = l.stop()

	// The end of the rollout: every replica is stopped the same way, with
	// no load left.
	sent := time.Now()
	for _, p := range c.procs {
		p.signal(t, syscall.SIGTERM)
	}
	for _, p := range c.procs {
		c.reap(p, sent)
	}
	lb.signal(t, syscall.SIGTERM)
	lb.wait(t, 5*time.Second)
	st := up.Stats()
	out.faults = st.Faults
	out.cutUpstream = st.Requests - st.Faults - st.Succeeded - st.InFlight
	out.elapsed = time.Since(begin)

	var failed []result
	for i := range out.results {
		r := &out.results[i]
		if r.fail == "" {
			continue
		}
		if v.drains && refusedUpstream(*r, up.History(r.prompt)) {
			r.fail = failRefused
			out.refused = append(out.refused, *r)
			continue
		}
		failed = append(failed, *r)
	}
	slices.SortFunc(failed, func(a, b result) int { return cmp.Compare(a.start, b.start) })
	for i, r := range failed {
		if i == 20 {
			t.Logf("... and %d more failures", len(failed)-i)
			break
		}
		t.Logf("failure %s\n%s", describe(r), explain(up.History(r.prompt), begin))
	}
	for _, r := range out.refused {
		t.Logf("refused by the upstream (not a failure) %s\n%s", describe(r), explain(up.History(r.prompt), begin))
	}

	if len(out.results) < 50 {
		t.Errorf("only %d requests were made: the load is too thin to prove anything", len(out.results))
	}
	if !v.drains {
		if len(failed) == 0 {
			t.Errorf("the control lost no request: the scenario does not exercise shutdown under load")
		}
		return
	}
	if len(failed) > 0 {
		t.Errorf("%d of %d requests failed through a rolling restart of draining replicas", len(failed), len(out.results))
	}
	if out.cutUpstream != 0 {
		t.Errorf("%d LLM calls were cut off upstream", out.cutUpstream)
	}
	for _, r := range out.results {
		if r.fail == "" {
			if n := up.Completed(r.prompt); n != 1 {
				t.Errorf("%q completed %d times upstream, want exactly once", r.prompt, n)
			}
		}
	}
	if st.InFlight != 0 {
		t.Errorf("%d calls still in flight upstream after every replica exited", st.InFlight)
	}
	if out.exits["exit 0"] != out.shutdowns {
		t.Errorf("replica exits: %v, want exit 0 for all %d", out.exits, out.shutdowns)
	}
}

// failRefused is the kind of a request that the upstream, not a restart,
// turned down; see refusedUpstream.
const failRefused = "refused by upstream"

// refusedUpstream reports whether a failed request is the upstream's doing
// rather than a restart's: the replica answered 429 with a Retry-After
// hint, and the upstream's history for its prompt shows that every attempt
// the replica's llmdrain client may make, and no other, was answered 429.
// Fewer attempts would mean the retries were cut short (by a drain, a
// deadline or a bug), which is a failure like any other.
func refusedUpstream(r result, h []llmtest.Exchange) bool {
	if r.fail != failStatus+" 429" || r.retryAfter == "" || len(h) != llmdrain.DefaultMaxRetries+1 {
		return false
	}
	for _, e := range h {
		if e.Status != http.StatusTooManyRequests {
			return false
		}
	}
	return true
}

// describe is one line about a request that did not succeed.
func describe(r result) string {
	kind := "plain"
	if r.stream {
		kind = "stream"
	}
	s := fmt.Sprintf("at %5.2fs after %v, %s via %q: %s: %s", r.start.Seconds(), r.took.Round(time.Millisecond), kind, r.replica, r.fail, r.detail)
	if r.retryAfter != "" {
		s += fmt.Sprintf(" (Retry-After: %s)", r.retryAfter)
	}
	return s
}

// explain lists what the upstream answered each attempt for a request's
// prompt, and the wait before each retry: enough to tell whether the
// retries ran out, were cut short, or never happened.
func explain(h []llmtest.Exchange, begin time.Time) string {
	if len(h) == 0 {
		return "    the upstream never saw this prompt"
	}
	var b strings.Builder
	for i, e := range h {
		fmt.Fprintf(&b, "    attempt %d at %5.2fs: %v", i+1, e.Received.Sub(begin).Seconds(), e)
		if i > 0 {
			fmt.Fprintf(&b, ", %v after the previous one", e.Received.Sub(h[i-1].Received).Round(time.Millisecond))
		}
		if i < len(h)-1 {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// startReplica starts replica i on its port and waits until it answers
// /readyz with 200 itself; the load balancer notices on its next check.
func (c *cluster) startReplica(i int) {
	c.t.Helper()
	c.gen[i]++
	name := fmt.Sprintf("%s.%d", replicaName(i), c.gen[i])
	env := slices.Concat(c.env, []string{fmt.Sprintf("%s=127.0.0.1:%d", serversettings.EnvAddr, c.ports[i])})
	p := startProc(c.t, c.dir, name, env, c.v.bin)
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", c.ports[i])
	if !poll(10*time.Second, p.exited, func() bool { return getStatus(c.probe, url) == http.StatusOK }) {
		c.t.Fatalf("%s (%s) not ready within 10s", name, p.status())
	}
	c.procs[i] = p
}

// waitServer waits until haproxy sees replica i in the wanted state and
// returns how long that took.
func (c *cluster) waitServer(i int, what string, ok func(server) bool) time.Duration {
	c.t.Helper()
	start := time.Now()
	name := replicaName(i)
	var last server
	if !poll(5*time.Second, nil, func() bool { last = servers(c.probe, c.statsURL)[name]; return ok(last) }) {
		c.t.Fatalf("haproxy did not mark %s %s within 5s (status %q)", name, what, last.status)
	}
	return time.Since(start)
}

// restart replaces replica i as a RollingUpdate would.
func (c *cluster) restart(i int) {
	c.t.Helper()
	p := c.procs[i]
	// Restart a replica that is working: every SIGTERM must find requests
	// in flight, or it tests nothing. With the load spread over three
	// replicas this is almost always true at once.
	var cur int
	poll(3*time.Second, nil, func() bool { cur = servers(c.probe, c.statsURL)[replicaName(i)].cur; return cur > 0 })
	c.out.inFlight += cur

	sent := time.Now()
	p.signal(c.t, syscall.SIGTERM)
	down := c.waitServer(i, "down", server.down)
	c.out.markDown = append(c.out.markDown, down)
	if c.v.drains && down >= drainDelay {
		c.t.Errorf("haproxy took %v to mark %s down, longer than DRAIN_DELAY %v: requests may reach a closed listener", down, p.name, drainDelay)
	}
	took := c.reap(p, sent)
	c.out.restarts++
	c.startReplica(i)
	c.waitServer(i, "up", server.up)
	c.t.Logf("%5.2fs  %s: SIGTERM with %d in flight, marked down after %v, %s after %v; %s up",
		sent.Sub(c.begin).Seconds(), p.name, cur, down.Round(time.Millisecond), p.status(), took.Round(time.Millisecond), c.procs[i].name)
}

// reap waits for a replica signalled at sent to exit, records how, and
// returns how long it took.
func (c *cluster) reap(p *proc, sent time.Time) time.Duration {
	c.t.Helper()
	p.wait(c.t, drainDelay+drainTimeout+serversettings.ExitGrace+5*time.Second)
	took := p.exit.Sub(sent)
	c.out.shutdowns++
	c.out.exitTook = append(c.out.exitTook, took)
	c.out.exits[p.status()]++
	if c.v.drains && took > drainDelay+drainTimeout {
		c.t.Errorf("%s took %v to exit, more than DRAIN_DELAY + DRAIN_TIMEOUT", p.name, took)
	}
	return took
}

// report formats the outcomes as a Markdown table.
func report(outs []*outcome) string {
	var b strings.Builder
	b.WriteString("| scenario | requests (plain/stream) | restarts | in flight at SIGTERM | 429s injected | refused by upstream | LLM calls cut | failures | failures by kind | plain p50 / p99 | stream p50 / p99 | marked down (max) | exit after SIGTERM (max) | shutdowns (how they ended) | took |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, o := range outs {
		var plain, stream []time.Duration
		kinds := map[string]int{}
		nStream, failures := 0, 0
		for _, r := range o.results {
			if r.stream {
				nStream++
			}
			switch {
			case r.fail == failRefused:
			case r.fail != "":
				failures++
				kinds[r.fail]++
			case r.stream:
				stream = append(stream, r.took)
			default:
				plain = append(plain, r.took)
			}
		}
		fmt.Fprintf(&b, "| %s | %d (%d/%d) | %d | %d | %d | %d | %d | %d | %s | %s | %s | %s | %s | %d (%s) | %s |\n",
			o.name, len(o.results), len(o.results)-nStream, nStream, o.restarts, o.inFlight, o.faults, len(o.refused), o.cutUpstream, failures,
			counts(kinds), percentiles(plain), percentiles(stream),
			ms(slices.Max(append([]time.Duration{0}, o.markDown...))), ms(slices.Max(append([]time.Duration{0}, o.exitTook...))),
			o.shutdowns, counts(o.exits), o.elapsed.Round(100*time.Millisecond))
	}
	return b.String()
}

func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// percentiles gives the nearest-rank p50 and p99 of d.
func percentiles(d []time.Duration) string {
	if len(d) == 0 {
		return "-"
	}
	slices.Sort(d)
	at := func(p int) time.Duration { return d[(len(d)*p+99)/100-1] }
	return ms(at(50)) + " / " + ms(at(99))
}

func ms(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }
