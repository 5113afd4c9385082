package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/batchfile"
	"github.com/llmdrain/llmdrain/llmtest"
)

// streamChildEnv makes the bench binary the child of the streaming
// scenario: it runs one batch file and prints its peak RSS. A child of its
// own, so that neither the fake server (which keeps a history per prompt)
// nor the other scenarios count in the peak.
const streamChildEnv = "LLMDRAIN_BENCH_STREAM_CHILD"

// runStream measures llmdrain's streamed batch runner (batchfile.Tasks →
// Client.BatchSeq → batchfile.Output, with a journal, as cmd/llmdrain runs
// it): peak RSS at two input sizes, for memory that stays flat, and wall
// time against a hand-written pool for the runner's own overhead.
func runStream(rc runConfig) section {
	sec := section{title: "7. Streamed batch files"}
	sizes := []int{10_000, 100_000}
	if rc.quick {
		sizes = []int{1_000, 10_000}
	}
	srv := llmtest.NewServer()
	defer srv.Close()
	dir, err := os.MkdirTemp("", "llmdrain-bench-stream-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		panic(err)
	}
	detail := table{head: []string{"Input lines", "Peak RSS", "Wall time", "Results"}}
	var rss []int64
	for _, n := range sizes {
		rc.progress("stream: %d lines", n)
		in := filepath.Join(dir, fmt.Sprintf("in-%d.jsonl", n))
		writeBatchInput(in, n)
		out := filepath.Join(dir, fmt.Sprintf("out-%d.jsonl", n))
		cmd := exec.Command(self)
		cmd.Env = append(os.Environ(), streamChildEnv+"="+strings.Join([]string{srv.URL, in, out}, ","))
		cmd.Stderr = os.Stderr
		t := time.Now()
		res, err := cmd.Output()
		wall := time.Since(t)
		if err != nil {
			sec.broken = append(sec.broken, fmt.Sprintf("child for %d lines: %v", n, err))
			return sec
		}
		var got struct{ PeakRSSKB, Completed int64 }
		if err := json.Unmarshal(res, &got); err != nil || got.Completed != int64(n) {
			sec.broken = append(sec.broken, fmt.Sprintf("child for %d lines: %s", n, res))
			return sec
		}
		rss = append(rss, got.PeakRSSKB)
		detail.add(fmtNum(float64(n)), fmt.Sprintf("%.1f MiB", float64(got.PeakRSSKB)/1024), fmtDur(wall), fmtNum(float64(got.Completed)))
	}
	growth := float64(rss[1]) / float64(rss[0])
	sec.addRow("7", fmt.Sprintf("Streamed batch file, %d vs %d lines: peak RSS", sizes[1], sizes[0]),
		fmt.Sprintf("%.1f MiB", float64(rss[1])/1024), fmt.Sprintf("%.1f MiB at %d lines", float64(rss[0])/1024, sizes[0]),
		fmt.Sprintf("%.2fx for 10x the lines", growth), "flat: well under 10x", "—")
	sec.detail = detail.String()
	sec.notes = append(sec.notes, "Each size runs in a child process (the bench binary re-executed) that streams the input through batchfile.Tasks, Client.BatchSeq at concurrency 50 with a journal, and batchfile.Output, against an llmtest server in the parent with no latency; the child reports its peak RSS (VmHWM). The memory that grows with the input is the duplicate check's and the output's index of custom_ids, 16 bytes of hash each plus map overhead.")
	return sec
}

// writeBatchInput writes an OpenAI Batch input of n chat requests.
func writeBatchInput(path string, n int) {
	f, err := os.Create(path)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	for i := range n {
		fmt.Fprintf(f, `{"custom_id": "request-%d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "prompt number %d"}]}}`+"\n", i, i)
	}
}

// streamChild is the child's work: URL, input and output from the env.
func streamChild(spec string) {
	parts := strings.Split(spec, ",")
	url, in, out := parts[0], parts[1], parts[2]
	c, err := llmdrain.New(llmdrain.Config{APIKey: benchKey, BaseURL: url, Model: benchModel})
	if err != nil {
		panic(err)
	}
	f, err := os.Open(in)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	o, err := batchfile.OpenOutput(out)
	if err != nil {
		panic(err)
	}
	res, err := c.BatchSeq(context.Background(), batchfile.Tasks(f), llmdrain.BatchOptions{Concurrency: 50, Journal: out + ".journal"},
		func(r llmdrain.TaskResult) error {
			if line, ok := batchfile.ResultOf(r); ok {
				return o.Write(line)
			}
			return nil
		})
	if err != nil {
		panic(err)
	}
	if err := o.Close(); err != nil {
		panic(err)
	}
	_ = c.Shutdown(context.Background())
	fmt.Printf(`{"PeakRSSKB": %s, "Completed": %d}`+"\n", strconv.FormatInt(peakRSSKB(), 10), res.Completed)
}

// peakRSSKB is the process's peak resident set: VmHWM, which belongs to
// the address space and so starts afresh at exec. getrusage's maxrss does
// not: Linux carries into it the peak of the address space exec replaced,
// which for a child of os/exec is its parent's.
func peakRSSKB() int64 {
	if data, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				if kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64); err == nil {
					return kb
				}
			}
		}
	}
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Maxrss
}
