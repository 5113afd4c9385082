package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	goopenai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

// rlParams sizes the rate-limit scenario: a provider metering requests
// and tokens per period, and the load put on it.
type rlParams struct {
	requests int           // requests per period
	tokens   int           // tokens per period
	period   time.Duration // the limits' period (a minute at OpenAI; shortened to keep runs short)
	latency  time.Duration // the provider's time to answer an admitted call
	n, conc  int           // calls, and callers at once
}

// rlCost is what one bench call ("hello") draws from the token bucket: its
// prompt and its reply, in llmtest's words.
func rlCost() int { return 1 + len(strings.Fields(llmtest.Reply("hello"))) }

// rlIdeal is the least wall time n calls can take under p's quota: both
// buckets start full and refill continuously, and the last call still
// takes the latency.
func rlIdeal(p rlParams, n int) time.Duration {
	sec := 0.0
	if p.requests > 0 {
		sec = max(sec, float64(n-p.requests)/float64(p.requests)*p.period.Seconds())
	}
	if p.tokens > 0 {
		sec = max(sec, float64(n*rlCost()-p.tokens)/float64(p.tokens)*p.period.Seconds())
	}
	return time.Duration(max(sec, 0)*float64(time.Second)) + p.latency
}

// rlServer is the metered provider; headers turns on both the
// x-ratelimit-* headers and the retry-after-ms hints.
func rlServer(p rlParams, headers bool) *llmtest.Server {
	return llmtest.NewServer(llmtest.WithLatency(p.latency), llmtest.WithRateLimit(llmtest.RateLimit{
		RequestsPerMinute: p.requests, TokensPerMinute: p.tokens, Period: p.period, Headers: headers, Hints: headers,
	}))
}

// rlResult is one contender's run.
type rlResult struct {
	name            string
	p               rlParams
	ok, n           int
	wall, ideal     time.Duration
	requests, r429s int
}

// throughput is the share of what the quota admitted during the run
// (the buckets' content at the start and their refill until the last
// answer's latency) that went to calls that succeeded. A client whose
// calls fail ends early, and is judged on the calls it got through, so
// the calls that succeeded are in the table beside it.
func (r rlResult) throughput() float64 {
	admitted := rlAdmitted(r.p, r.wall)
	return min(float64(r.ok)/admitted, 1)
}

// rlAdmitted is how many calls p's quota admits over wall, the last
// latency aside.
func rlAdmitted(p rlParams, wall time.Duration) float64 {
	sec := max(wall-p.latency, 0).Seconds() / p.period.Seconds()
	calls := math.Inf(1)
	if p.requests > 0 {
		calls = float64(p.requests) * (1 + sec)
	}
	if p.tokens > 0 {
		calls = math.Min(calls, float64(p.tokens)*(1+sec)/float64(rlCost()))
	}
	return calls
}
func (r rlResult) share429() float64 { return float64(r.r429s) / float64(max(r.requests, 1)) }

// rlContender runs the calls against a fresh provider and returns what
// it saw.
type rlContender struct {
	name string
	run  func(url string, n, conc int) (ok int, wall time.Duration, err error)
}

func rlRun(p rlParams, headers bool, c rlContender) (rlResult, error) {
	srv := rlServer(p, headers)
	defer srv.Close()
	ok, wall, err := c.run(srv.URL, p.n, p.conc)
	st := srv.Stats()
	return rlResult{name: c.name, p: p, ok: ok, n: p.n, wall: wall, ideal: rlIdeal(p, p.n), requests: st.Requests, r429s: st.RateLimited}, err
}

// inProcess runs a caller made by mk in a closed loop.
func inProcess(name string, mk func(url string) caller) rlContender {
	return rlContender{name: name, run: func(url string, n, conc int) (int, time.Duration, error) {
		c := mk(url)
		defer c.close()
		o := closedLoop(c, n, conc)
		return o.ok, o.wall, nil
	}}
}

func runRateLimit(rc runConfig) section {
	sec := section{title: "8. Rate limits"}
	cost := rlCost()
	// 40 requests/s over a 5 s period: a bucket of 200, well above the
	// callers at once, as a minute's bucket is at a real provider.
	p := rlParams{requests: 200, period: 5 * time.Second, latency: 200 * time.Millisecond, n: 720, conc: 64}
	if rc.quick {
		p = rlParams{requests: 40, period: 2 * time.Second, latency: 100 * time.Millisecond, n: 80, conc: 32}
	}
	// The token quota binds a little before the request quota does.
	p.tokens = p.requests * cost * 9 / 10
	contenders := []rlContender{
		inProcess("llmdrain (this version, defaults)", func(u string) caller {
			c, _ := llmdrainClient("llmdrain", u, llmdrain.Config{})
			return c
		}),
		inProcess("openai-go v3 (default retries)", openAIGo),
	}
	var baseNote string
	if rc.base != "" {
		bin, err := buildBase(rc)
		if err != nil {
			sec.broken = append(sec.broken, "building the base llmdrain: "+err.Error())
		} else {
			defer os.RemoveAll(filepath.Dir(bin))
			contenders = append(contenders[:1], append([]rlContender{baseContender(bin)}, contenders[1:]...)...)
			baseNote = fmt.Sprintf(" \"llmdrain (before)\" is the library at %s (built from -base), in a child process, with its defaults.", rc.base)
		}
	}
	modes := []bool{true, false}
	if rc.quick {
		modes = []bool{true}
	}
	detail := table{head: []string{"Provider", "Client", "Throughput (of ideal)", "Requests answered 429", "Calls ok", "Wall time (ideal)"}}
	for _, headers := range modes {
		mode := "x-ratelimit-* headers and retry-after-ms"
		if !headers {
			mode = "no headers, no hints"
		}
		var res []rlResult
		for _, c := range contenders {
			r, err := rlRun(p, headers, c)
			if err != nil {
				sec.broken = append(sec.broken, fmt.Sprintf("%s, %s: %v", c.name, mode, err))
				continue
			}
			rc.progress("ratelimit %s: %s: %d/%d ok in %v (ideal %v), %d requests, %d 429s", mode, r.name, r.ok, r.n, r.wall.Round(time.Millisecond), r.ideal.Round(time.Millisecond), r.requests, r.r429s)
			detail.add(mode, r.name, pct(r.throughput()), fmt.Sprintf("%s (%d of %d)", pct(r.share429()), r.r429s, r.requests), fmt.Sprintf("%d of %d", r.ok, r.n), fmtDur(r.wall)+" ("+fmtDur(r.ideal)+")")
			res = append(res, r)
		}
		if len(res) == 0 {
			continue
		}
		ld := res[0]
		var refs []string
		for _, r := range res[1:] {
			refs = append(refs, fmt.Sprintf("%s: %s, %s 429s", r.name, pct(r.throughput()), pct(r.share429())))
		}
		wantT, want429 := 0.95, 0.02
		if !headers {
			wantT, want429 = 0.85, 0.10
		}
		sec.addRow("8", "Rate limit, one process, "+mode+": throughput of ideal; share of requests answered 429",
			fmt.Sprintf("%s; %s", pct(ld.throughput()), pct(ld.share429())),
			strings.Join(refs, " — "), "—",
			fmt.Sprintf("≥ %.0f %%; ≤ %.0f %%", 100*wantT, 100*want429),
			verdict(ld.throughput() >= wantT && ld.share429() <= want429))
	}
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("An llmtest server meters %d requests and %d tokens per %v (a call costs %d tokens: its prompt and its reply), each a bucket that starts full and refills continuously, as OpenAI meters a key per minute; the period is shortened so that a run takes seconds, which makes the buckets' burst a few seconds' worth rather than a minute's, still several times the callers. Admitted calls take %v; refused ones are answered 429 at once. %d callers make %d calls in a closed loop: %d times the %.0f calls the quota sustains at once.", p.requests, p.tokens, p.period, cost, p.latency, p.conc, p.n, p.conc/max(1, int(float64(p.tokens)/float64(cost)/p.period.Seconds()*p.latency.Seconds())), float64(p.tokens)/float64(cost)/p.period.Seconds()*p.latency.Seconds()),
		"Throughput is the share of what the quota admitted during the run (the buckets' content at the start plus their refill until the last call's latency) that went to calls that succeeded; for a client whose calls all succeed it is the ideal wall time over the measured one. A client whose calls fail ends early and is judged on those it got through: see Calls ok beside it. The share of 429s is of every request the provider saw. Each client runs alone against a fresh provider, once."+baseNote)
	return sec
}

// runOutage measures retries during an outage: every attempt answered 503
// at once for the outage's length, calls arriving at a steady rate.
func runOutage(rc runConfig) section {
	sec := section{title: "9. Retries during an outage"}
	outage, rate := 10*time.Second, 40
	if rc.quick {
		outage, rate = 3*time.Second, 50
	}
	n := int(outage.Seconds() * float64(rate))
	detail := table{head: []string{"Client", "Requests per call during the outage", "Requests", "Calls", "Failed with a typed error", "Other errors"}}
	type run struct {
		name string
		cfg  llmdrain.Config
	}
	runs := []run{
		{"llmdrain, retry budget (defaults)", llmdrain.Config{}},
		{"llmdrain, no retry budget", llmdrain.Config{RetryBudget: -1, MinRetriesPerSecond: -1}},
	}
	var perCall []float64
	for _, r := range runs {
		srv := llmtest.NewServer(llmtest.WithLatency(20 * time.Millisecond))
		c, _ := llmdrainClient(r.name, srv.URL, r.cfg)
		srv.SetDown(503)
		var (
			mu             sync.Mutex
			typed, untyped int
		)
		start := time.Now()
		wait := arrive(n, time.Second/time.Duration(rate), func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			err := c.call(ctx)
			var apiErr *goopenai.APIError
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
			case errors.As(err, &apiErr) || errors.Is(err, llmdrain.ErrRetryBudget):
				typed++
			default:
				untyped++
				if untyped == 1 {
					sec.broken = append(sec.broken, fmt.Sprintf("%s: an untyped error: %v", r.name, err))
				}
			}
		})
		// The outage ends once every call arrived and its length passed;
		// calls still retrying then may succeed.
		time.Sleep(time.Until(start.Add(outage)))
		requests := srv.Stats().Requests
		srv.SetDown(0)
		wait()
		c.close()
		srv.Close()
		pc := float64(requests) / float64(n)
		perCall = append(perCall, pc)
		rc.progress("outage %s: %d calls, %d requests during the outage (%.2f per call), %d typed errors, %d other", r.name, n, requests, pc, typed, untyped)
		detail.add(r.name, fmt.Sprintf("%.2f", pc), strconv.Itoa(requests), strconv.Itoa(n), strconv.Itoa(typed), strconv.Itoa(untyped))
	}
	// Over any 10 s, the budget allows 20 % of the calls plus 10 retries
	// a second: 100 at once for an outage shorter than that.
	bound := 1 + llmdrain.DefaultRetryBudget + llmdrain.DefaultMinRetriesPerSecond*max(outage, 10*time.Second).Seconds()/float64(n)
	sec.addRow("9", fmt.Sprintf("Outage (every attempt 503 for %v), %d calls/s: requests per call", outage, rate),
		fmt.Sprintf("%.2f with the budget", perCall[0]), fmt.Sprintf("%.2f without", perCall[1]),
		times(perCall[1]/perCall[0])+" fewer", fmt.Sprintf("≤ %.2f (1 + 20 %% + 10/s over 10 s)", bound), verdict(perCall[0] <= bound*1.05))
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("An llmtest server answers every chat request 503 at once for %v while calls arrive at %d/s (an open loop: arrivals do not wait for the client); then it recovers, and calls still retrying may succeed. Requests per call counts the requests the server saw during the outage over the calls that arrived in it. Each call must end with a success or a typed error: the *openai.APIError of the last answer, which the budget's cut also wraps (errors.Is(err, llmdrain.ErrRetryBudget)).", outage, rate),
		"Without a budget every call makes its 1 + MaxRetries (3) attempts, whatever the others do; with it, retries stop at 20 % of the calls plus 10 per second (Finagle's and Linkerd's defaults), and the adaptive limit, halved by each wave of 503s, lets few attempts run at once.")
	return sec
}

// baseChild is the program run for "llmdrain (before)": the library of
// another checkout, built against it, making the same calls.
const baseChild = `package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/llmdrain/llmdrain"
	openai "github.com/sashabaranov/go-openai"
)

func main() {
	url := os.Args[1]
	n, _ := strconv.Atoi(os.Args[2])
	conc, _ := strconv.Atoi(os.Args[3])
	c, err := llmdrain.New(llmdrain.Config{APIKey: "sk-bench-not-a-real-key", BaseURL: url, Model: "gpt-4o"})
	if err != nil {
		panic(err)
	}
	req := openai.ChatCompletionRequest{Model: "gpt-4o", Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hello"}}}
	var next, ok atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if _, err := c.CreateChatCompletion(context.Background(), req); err == nil {
					ok.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	fmt.Println(ok.Load(), int64(time.Since(start)))
}
`

// buildBase builds baseChild against the checkout at rc.base.
func buildBase(rc runConfig) (string, error) {
	base, err := filepath.Abs(rc.base)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "llmdrain-bench-base-")
	if err != nil {
		return "", err
	}
	sum, _ := os.ReadFile(filepath.Join(base, "go.sum"))
	mod := "module basechild\n\ngo 1.23\n\nrequire github.com/llmdrain/llmdrain v0.0.0\n\nreplace github.com/llmdrain/llmdrain => " + base + "\n"
	for name, b := range map[string][]byte{"main.go": []byte(baseChild), "go.mod": []byte(mod), "go.sum": sum} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return "", err
		}
	}
	rc.progress("building the base llmdrain at %s", base)
	for _, args := range [][]string{{"mod", "tidy"}, {"build", "-o", "child", "."}} {
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("go %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return filepath.Join(dir, "child"), nil
}

func baseContender(bin string) rlContender {
	return rlContender{name: "llmdrain (before, defaults)", run: func(url string, n, conc int) (int, time.Duration, error) {
		out, err := exec.Command(bin, url, strconv.Itoa(n), strconv.Itoa(conc)).Output()
		if err != nil {
			return 0, 0, err
		}
		var ok, wall int64
		if _, err := fmt.Sscan(string(out), &ok, &wall); err != nil {
			return 0, 0, fmt.Errorf("reading %q: %w", out, err)
		}
		return int(ok), time.Duration(wall), nil
	}}
}
