// Command bench measures llmdrain against its peers, side by side in one
// run, and prints the results as markdown: the happy-path overhead over the
// bare go-openai client, the cost of the Tracker, drain latency, goodput in
// a 429 storm, failover through a 5xx outage and batch efficiency.
//
// Run it from this directory:
//
//	go run .          # the full run, a few minutes
//	go run . -quick   # a smoke run for CI, under a minute (about 40 s)
//
// Every server it starts listens on 127.0.0.1; nothing else is contacted.
// Progress goes to stderr, the report to stdout.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

// runConfig is what every scenario is told about the run.
type runConfig struct {
	quick bool
	reps  int    // repetitions of each timed A/B comparison
	base  string // a checkout of llmdrain to compare with as it was; empty: none
	log   io.Writer
}

func (rc runConfig) progress(format string, args ...any) {
	fmt.Fprintf(rc.log, "bench: "+format+"\n", args...)
}

// section is one scenario's share of the report: rows for the summary
// table and a detail table with notes.
type section struct {
	title   string
	rows    [][]string
	detail  string
	notes   []string
	skipped string
	broken  []string // what went wrong that never should, whatever the timings
}

func (s *section) addRow(cells ...string) { s.rows = append(s.rows, cells) }

var scenarios = []struct {
	name string
	run  func(runConfig) section
}{
	{"happy", runHappy},
	{"tracker", runTracker},
	{"drain", runDrain},
	{"storm", runStorm},
	{"failover", runFailover},
	{"batch", runBatch},
	{"stream", runStream},
	{"ratelimit", runRateLimit},
	{"outage", runOutage},
	{"fleet", runFleet},
}

func main() {
	if spec := os.Getenv(streamChildEnv); spec != "" {
		streamChild(spec)
		return
	}
	if spec := os.Getenv(fleetWorkerEnv); spec != "" {
		fleetWorker(spec)
		return
	}
	testing.Init() // the tracker scenario uses testing.Benchmark
	quick := flag.Bool("quick", false, "smoke run for CI: fewer repetitions and smaller scenarios, under a minute")
	reps := flag.Int("reps", 0, "repetitions of each timed A/B comparison (0: 7, or 3 with -quick)")
	base := flag.String("base", "", "a checkout of llmdrain (such as a git worktree of main) to run as \"llmdrain (before)\" in the ratelimit scenario; empty: left out")
	only := flag.String("only", "", "comma-separated scenarios to run ("+names()+"); empty means all")
	flag.Parse()

	rc := runConfig{quick: *quick, reps: *reps, base: *base, log: os.Stderr}
	if rc.reps <= 0 {
		rc.reps = 7
		if rc.quick {
			rc.reps = 3
		}
	}
	want := map[string]bool{}
	for _, n := range strings.Split(*only, ",") {
		if n = strings.TrimSpace(n); n != "" {
			want[n] = true
		}
	}
	for n := range want {
		if !strings.Contains(","+names()+",", ","+n+",") {
			fmt.Fprintf(os.Stderr, "bench: unknown scenario %q (have %s)\n", n, names())
			os.Exit(2)
		}
	}

	start := time.Now()
	var secs []section
	for _, s := range scenarios {
		if len(want) > 0 && !want[s.name] {
			continue
		}
		t := time.Now()
		sec := s.run(rc)
		rc.progress("%s done in %v", s.name, time.Since(t).Round(time.Millisecond))
		secs = append(secs, sec)
	}
	report(os.Stdout, rc, secs, time.Since(start))
	// A missed target is a result; a broken scenario is a failure.
	failed := false
	for _, s := range secs {
		for _, b := range s.broken {
			fmt.Fprintf(os.Stderr, "bench: %s: %s\n", s.title, b)
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func names() string {
	var ns []string
	for _, s := range scenarios {
		ns = append(ns, s.name)
	}
	return strings.Join(ns, ",")
}

func report(w io.Writer, rc runConfig, secs []section, took time.Duration) {
	mode := "full"
	if rc.quick {
		mode = "quick (smoke: numbers are indicative only)"
	}
	fmt.Fprintf(w, "## Results\n\n%s\n\nRun: %s, %d repetitions per A/B comparison, %v in all.\n\n",
		machine(), mode, rc.reps, took.Round(time.Second))
	sum := table{head: []string{"#", "Measurement", "llmdrain", "Reference", "Ratio", "Target", "Met"}}
	for _, s := range secs {
		if s.skipped != "" {
			sum.add(strings.SplitN(s.title, ".", 2)[0], strings.TrimSpace(strings.SplitN(s.title, ".", 2)[1]), s.skipped, "—", "—", "—", "—")
			continue
		}
		for _, r := range s.rows {
			sum.add(r...)
		}
	}
	fmt.Fprintln(w, sum.String())
	for _, s := range secs {
		fmt.Fprintf(w, "### %s\n\n", s.title)
		if s.skipped != "" {
			fmt.Fprintf(w, "%s\n\n", s.skipped)
			continue
		}
		if s.detail != "" {
			fmt.Fprintln(w, s.detail)
		}
		for _, b := range s.broken {
			fmt.Fprintf(w, "- **Broken:** %s\n", b)
		}
		for _, n := range s.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		if len(s.notes)+len(s.broken) > 0 {
			fmt.Fprintln(w)
		}
	}
}
