package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/llmdrain/llmdrain"
)

// blockingAPI is an OpenAI-compatible chat endpoint whose every request
// waits for a release, so that the moment a call completes is chosen, and
// timed, by the benchmark.
type blockingAPI struct {
	entered chan struct{}
	release chan struct{}
}

func newBlockingAPI() *blockingAPI {
	return &blockingAPI{entered: make(chan struct{}), release: make(chan struct{})}
}

const completionJSON = `{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"gpt-4o",` +
	`"choices":[{"index":0,"message":{"role":"assistant","content":"You said: hello"},"finish_reason":"stop"}],` +
	`"usage":{"prompt_tokens":1,"completion_tokens":3,"total_tokens":4}}`

func (a *blockingAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	a.entered <- struct{}{}
	<-a.release
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, completionJSON)
}

// serve starts an http.Server for h on a fresh loopback port.
func serve(h http.Handler) (*http.Server, string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: h, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.Serve(ln) }()
	return srv, "http://" + ln.Addr().String()
}

// drainer is one way of waiting for the last in-flight call. trial starts
// one call, starts the drain, waits hold with the drain waiting, completes
// the call and returns the time from completion to the drain returning.
type drainer struct {
	name  string
	trial func(hold time.Duration) time.Duration
}

func trackerDrainer() drainer {
	return drainer{"llmdrain Tracker.Drain (done → Drain returns)", func(hold time.Duration) time.Duration {
		tr := llmdrain.NewTracker()
		_, done, err := tr.Begin(context.Background())
		if err != nil {
			panic(err)
		}
		returned := make(chan time.Time, 1)
		go func() {
			if err := tr.Drain(context.Background()); err != nil {
				panic(err)
			}
			returned <- time.Now()
		}()
		for !tr.Draining() {
			time.Sleep(50 * time.Microsecond)
		}
		time.Sleep(hold)
		t0 := time.Now()
		done()
		return (<-returned).Sub(t0)
	}}
}

// clientDrainer times llmdrain.Client.Shutdown end to end: from the
// upstream handler being released to Shutdown returning, which includes
// the response crossing loopback and go-openai reading it.
func clientDrainer(api *blockingAPI, baseURL string) drainer {
	return drainer{"llmdrain Client.Shutdown (upstream handler released → Shutdown returns)", func(hold time.Duration) time.Duration {
		call, c := llmdrainClient("llmdrain", baseURL+"/v1", llmdrain.Config{})
		defer call.close()
		callDone := make(chan error, 1)
		go func() { callDone <- call.call(context.Background()) }()
		<-api.entered
		returned := make(chan time.Time, 1)
		go func() {
			if err := c.Shutdown(context.Background()); err != nil {
				panic(err)
			}
			returned <- time.Now()
		}()
		for !c.Tracker().Draining() {
			time.Sleep(50 * time.Microsecond)
		}
		time.Sleep(hold)
		t0 := time.Now()
		api.release <- struct{}{}
		d := (<-returned).Sub(t0)
		if err := <-callDone; err != nil {
			panic(err)
		}
		return d
	}}
}

// httpServerDrainer times http.Server.Shutdown doing the same job: one
// handler in flight, Shutdown waiting, the handler finishing.
func httpServerDrainer() drainer {
	return drainer{"http.Server.Shutdown (handler released → Shutdown returns)", func(hold time.Duration) time.Duration {
		api := newBlockingAPI()
		srv, url := serve(api)
		tr := newTransport()
		defer tr.CloseIdleConnections()
		callDone := make(chan error, 1)
		go func() {
			resp, err := (&http.Client{Transport: tr}).Post(url+"/v1/chat/completions", "application/json", strings.NewReader(`{}`))
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			callDone <- err
		}()
		<-api.entered
		returned := make(chan time.Time, 1)
		go func() {
			if err := srv.Shutdown(context.Background()); err != nil {
				panic(err)
			}
			returned <- time.Now()
		}()
		time.Sleep(hold)
		t0 := time.Now()
		api.release <- struct{}{}
		d := (<-returned).Sub(t0)
		if err := <-callDone; err != nil {
			panic(err)
		}
		return d
	}}
}

// pollingDrainer is the seed's approach: a mutex-guarded registry of
// active requests and a loop that checks it every 100 ms.
func pollingDrainer() drainer {
	return drainer{"100 ms polling loop, as in the seed (unregister → loop returns)", func(hold time.Duration) time.Duration {
		var mu sync.Mutex
		active := map[string]bool{"req-1": true}
		returned := make(chan time.Time, 1)
		go func() {
			for {
				mu.Lock()
				n := len(active)
				mu.Unlock()
				if n == 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			returned <- time.Now()
		}()
		time.Sleep(hold)
		t0 := time.Now()
		mu.Lock()
		delete(active, "req-1")
		mu.Unlock()
		return (<-returned).Sub(t0)
	}}
}

// runDrain measures drain latency over many trials. In each trial every
// drainer gets the same hold, drawn from 1 to 100 ms, so that pollers are
// caught at the same phases.
func runDrain(rc runConfig) section {
	trials := 100
	if rc.quick {
		trials = 12
	}
	api := newBlockingAPI()
	srv, url := serve(api)
	defer srv.Close()

	drainers := []drainer{trackerDrainer(), clientDrainer(api, url), httpServerDrainer(), pollingDrainer()}
	lat := make([][]time.Duration, len(drainers))
	rng := rand.New(rand.NewPCG(1, 2))
	for t := range trials {
		if t%25 == 0 {
			rc.progress("drain trial %d/%d", t+1, trials)
		}
		hold := time.Millisecond + time.Duration(rng.Int64N(int64(99*time.Millisecond)))
		for k := range drainers {
			i := (k + t) % len(drainers)
			lat[i] = append(lat[i], drainers[i].trial(hold))
		}
	}

	sec := section{title: "3. Drain latency"}
	detail := table{head: []string{"Drain", "p50", "p99", "max"}}
	for i, d := range drainers {
		detail.add(d.name, fmtDur(quantile(lat[i], 0.5)), fmtDur(quantile(lat[i], 0.99)), fmtDur(quantile(lat[i], 1)))
	}
	p99 := quantile(lat[0], 0.99)
	sec.addRow("3", "Drain latency, Tracker.Drain: p50 / p99",
		fmtDur(quantile(lat[0], 0.5))+" / "+fmtDur(p99),
		fmt.Sprintf("http.Server.Shutdown %s / %s; 100 ms poll %s / %s",
			fmtDur(quantile(lat[2], 0.5)), fmtDur(quantile(lat[2], 0.99)), fmtDur(quantile(lat[3], 0.5)), fmtDur(quantile(lat[3], 0.99))),
		times(float64(quantile(lat[2], 0.99))/float64(p99))+" faster (p99 vs Shutdown)",
		"p99 < 1 ms", verdict(p99 < time.Millisecond))
	cp99 := quantile(lat[1], 0.99)
	sec.addRow("3", "Drain latency, Client.Shutdown over loopback: p50 / p99",
		fmtDur(quantile(lat[1], 0.5))+" / "+fmtDur(cp99),
		fmt.Sprintf("http.Server.Shutdown %s / %s", fmtDur(quantile(lat[2], 0.5)), fmtDur(quantile(lat[2], 0.99))),
		times(float64(quantile(lat[2], 0.99))/float64(cp99))+" faster (p99 vs Shutdown)",
		"p99 < 1 ms", verdict(cp99 < time.Millisecond))
	sec.detail = detail.String()
	sec.notes = append(sec.notes,
		fmt.Sprintf("%d trials per drain, interleaved. In each trial one call is in flight, the drain starts, and after a hold drawn uniformly from 1 to 100 ms (the same for every drain in that trial) the call completes; the time is from the completion to the drain returning.", trials),
		"http.Server.Shutdown polls for idle connections, starting at 1 ms and doubling up to 500 ms, so its latency grows with how long it has already waited; the seed's loop sleeps 100 ms between checks. llmdrain's drain is woken by the last done.")
	return sec
}
