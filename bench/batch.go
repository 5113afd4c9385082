package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

// runBatch times llmdrain's Batch against the ideal (every slot busy all
// the time) and against the loop people write by hand: a fixed pool of
// goroutines calling the bare go-openai client.
func runBatch(rc runConfig) section {
	const (
		conc    = 50
		latency = 20 * time.Millisecond
	)
	n := 1000
	if rc.quick {
		n = 200
	}
	srv := llmtest.NewServer(llmtest.WithLatency(latency))
	defer srv.Close()
	dir, err := os.MkdirTemp("", "llmdrain-bench-")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	tasks := make([]llmdrain.Task, n)
	for i := range tasks {
		tasks[i] = llmdrain.Task{Prompt: fmt.Sprintf("task %d", i)}
	}
	ld, c := llmdrainClient("llmdrain", srv.URL, llmdrain.Config{})
	defer ld.close()
	bare := bareGoOpenAI(srv.URL)
	defer bare.close()

	journals := 0
	contenders := []struct {
		name string
		run  func() (ok int)
	}{
		{"llmdrain Batch", func() int {
			res, err := c.Batch(context.Background(), tasks, llmdrain.BatchOptions{Concurrency: conc})
			if err != nil {
				panic(err)
			}
			return res.Completed
		}},
		{"llmdrain Batch with a journal", func() int {
			journals++
			res, err := c.Batch(context.Background(), tasks, llmdrain.BatchOptions{
				Concurrency: conc, Journal: filepath.Join(dir, fmt.Sprintf("run-%d.jsonl", journals))})
			if err != nil {
				panic(err)
			}
			return res.Completed
		}},
		{"hand-written pool of 50 goroutines, bare go-openai", func() int {
			return closedLoop(bare, n, conc).ok
		}},
		{"llmdrain BatchSeq (streamed, results by callback)", func() int {
			seq := func(yield func(llmdrain.Task, error) bool) {
				for _, t := range tasks {
					if !yield(t, nil) {
						return
					}
				}
			}
			res, err := c.BatchSeq(context.Background(), seq, llmdrain.BatchOptions{Concurrency: conc}, nil)
			if err != nil {
				panic(err)
			}
			return res.Completed
		}},
	}
	ideal := time.Duration((n+conc-1)/conc) * latency
	walls := make([][]float64, len(contenders))
	failed := 0
	for r := range rc.reps {
		rc.progress("batch rep %d/%d", r+1, rc.reps)
		for k := range contenders {
			i := (k + r) % len(contenders)
			t := time.Now()
			ok := contenders[i].run()
			walls[i] = append(walls[i], float64(time.Since(t)))
			failed += n - ok
		}
	}

	sec := section{title: "6. Batch efficiency"}
	detail := table{head: []string{"Runner", "Wall time (median, min–max)", "vs ideal"}}
	for i, ct := range contenders {
		lo, hi := minMax(walls[i])
		detail.add(ct.name, fmt.Sprintf("%s (%s–%s)", fmtDur(time.Duration(median(walls[i]))), fmtDur(time.Duration(lo)), fmtDur(time.Duration(hi))),
			fmt.Sprintf("%.2fx", median(walls[i])/float64(ideal)))
	}
	r := median(walls[0]) / float64(ideal)
	sec.addRow("6", fmt.Sprintf("Batch of %d tasks, concurrency %d, %v latency: wall time", n, conc, latency),
		fmtDur(time.Duration(median(walls[0]))),
		fmt.Sprintf("ideal %s; hand-written pool %s; with a journal %s", fmtDur(ideal),
			fmtDur(time.Duration(median(walls[2]))), fmtDur(time.Duration(median(walls[1])))),
		fmt.Sprintf("%.2fx ideal", r), "none set (ratio to ideal reported)", "—")
	over := median(walls[3])/median(walls[2]) - 1
	sec.addRow("6", "BatchSeq (streamed) vs hand-written pool: wall time overhead",
		pct(over), fmt.Sprintf("BatchSeq %s; pool %s", fmtDur(time.Duration(median(walls[3]))), fmtDur(time.Duration(median(walls[2])))),
		pct(over), "≤ 2 %", map[bool]string{true: "met", false: "missed"}[over <= 0.02])
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("%d single-prompt tasks against an llmtest server with %v latency; the ideal is %d rounds of %v = %v. %d repetitions, interleaved. The journal is a JSON Lines file in a temporary directory, synced as Batch does.", n, latency, (n+conc-1)/conc, latency, ideal, rc.reps))
	if failed > 0 {
		sec.broken = append(sec.broken, fmt.Sprintf("%d tasks failed across all runs, none should", failed))
	}
	return sec
}
