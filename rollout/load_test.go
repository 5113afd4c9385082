package rollout

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/llmdrain/llmdrain/llmtest"
)

// result is one client request, as the load generator saw it.
type result struct {
	prompt  string
	stream  bool
	start   time.Duration // since the scenario began
	took    time.Duration
	replica string // X-Replica, when a response came
	fail    string // empty for a complete 200, else the failure's kind
	detail  string
	// retryAfter is the Retry-After header of a response other than 200.
	retryAfter string
}

// Failure kinds.
const (
	failConn      = "connection" // no response: refused, reset, EOF before the headers
	failStatus    = "status"     // a response other than 200 (the kind is "status 502" etc.)
	failCut       = "cut"        // a 200 whose body broke off (read error, stream without [DONE])
	failErrEvent  = "error event"
	failWrongBody = "wrong body"
)

// load drives requests through the load balancer from a few workers, each
// sending one request at a time, plain and streamed in turn, for as long
// as it runs. It never retries: every failure a client would see is
// counted. (Go's http.Transport replays a request on a broken reused
// connection only when it is idempotent; a POST without an idempotency
// key is not.)
type load struct {
	url    string
	client *http.Client
	tr     *http.Transport
	begin  time.Time

	stopping chan struct{}      // closed by stop: no new request
	abort    context.CancelFunc // cancels requests in flight, on a failed test only
	ctx      context.Context
	wg       sync.WaitGroup

	mu      sync.Mutex
	results []result
}

// startLoad starts workers sending to url until stop is called. Results
// are timed from begin.
func startLoad(url string, workers int, begin time.Time) *load {
	tr := &http.Transport{MaxIdleConnsPerHost: workers, DisableCompression: true}
	ctx, abort := context.WithCancel(context.Background())
	l := &load{
		url: url, tr: tr, client: &http.Client{Transport: tr}, begin: begin,
		stopping: make(chan struct{}), ctx: ctx, abort: abort,
	}
	for w := range workers {
		l.wg.Add(1)
		go l.work(w)
	}
	return l
}

// stop lets the requests in flight finish, then returns every result.
func (l *load) stop() []result {
	select {
	case <-l.stopping:
	default:
		close(l.stopping)
	}
	l.wg.Wait()
	l.abort()
	l.tr.CloseIdleConnections()
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]result(nil), l.results...)
}

// kill cancels the requests in flight and waits for the workers: the
// cleanup of a test that failed half-way.
func (l *load) kill() {
	l.abort()
	l.stop()
}

func (l *load) work(w int) {
	defer l.wg.Done()
	for i := 0; ; i++ {
		select {
		case <-l.stopping:
			return
		default:
		}
		r := l.do(prompt(w, i), (w+i)%2 == 0)
		l.mu.Lock()
		l.results = append(l.results, r)
		l.mu.Unlock()
	}
}

// prompt is unique per request, so the upstream's Completed count can be
// checked per request, and 8 to 24 words long, which with the upstream's
// delay between streamed words makes streams of one to three seconds.
func prompt(worker, i int) string {
	words := []string{"drain", "the", "replica", "before", "it", "goes", "away", "please"}
	n := 4 + (worker*7+i*5)%17
	var b strings.Builder
	fmt.Fprintf(&b, "worker %d request %d", worker, i)
	for k := range n {
		b.WriteByte(' ')
		b.WriteString(words[(worker+i+k)%len(words)])
	}
	return b.String()
}

// do sends one generate request and reads the whole answer.
func (l *load) do(prompt string, stream bool) result {
	res := result{prompt: prompt, stream: stream, start: time.Since(l.begin)}
	start := time.Now()
	fail := func(kind string, format string, args ...any) result {
		res.fail, res.detail, res.took = kind, fmt.Sprintf(format, args...), time.Since(start)
		return res
	}

	ctx, cancel := context.WithTimeout(l.ctx, 30*time.Second)
	defer cancel()
	body, _ := json.Marshal(map[string]any{"prompt": prompt, "stream": stream})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, l.url, strings.NewReader(string(body)))
	if err != nil {
		return fail(failConn, "%v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := l.client.Do(req)
	if err != nil {
		return fail(failConn, "%v", err)
	}
	defer resp.Body.Close()
	res.replica = resp.Header.Get("X-Replica")
	if resp.StatusCode != http.StatusOK {
		res.retryAfter = resp.Header.Get("Retry-After")
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fail(fmt.Sprintf("%s %d", failStatus, resp.StatusCode), "%s", strings.TrimSpace(string(b)))
	}
	want := llmtest.Reply(prompt)
	if !stream {
		var out struct{ Text string }
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return fail(failCut, "%v after %d bytes", err, len(b))
		}
		if err := json.Unmarshal(b, &out); err != nil || out.Text != want {
			return fail(failWrongBody, "%q", b)
		}
		res.took = time.Since(start)
		return res
	}
	var text strings.Builder
	done := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case done && line != "":
			return fail(failWrongBody, "%q after [DONE]", line)
		case line == "data: [DONE]":
			done = true
		case line == "event: error":
			return fail(failErrEvent, "after %q", text.String())
		case strings.HasPrefix(line, "data: "):
			var piece struct{ Text string }
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &piece); err != nil {
				return fail(failWrongBody, "%q", line)
			}
			text.WriteString(piece.Text)
		}
	}
	switch err := sc.Err(); {
	case err != nil:
		return fail(failCut, "%v after %q", err, text.String())
	case !done:
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fail(failCut, "timed out after %q", text.String())
		}
		return fail(failCut, "no [DONE] after %q", text.String())
	case text.String() != want:
		return fail(failWrongBody, "got %q", text.String())
	}
	res.took = time.Since(start)
	return res
}
