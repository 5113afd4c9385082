package llmtest_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// Hang is left out here: telling a hang from a slow success over the wire
// needs a timeout, and timeouts are what make tests flaky. The internal
// draw test covers it.
var testChaos = llmtest.Chaos{
	RateLimit:   0.15,
	ServerError: 0.15,
	Reset:       0.1,
	Truncate:    0.1,
}

// chaosOutcomes sends n sequential plain requests and describes what the
// client saw for each.
func chaosOutcomes(t *testing.T, srv *llmtest.Server, n int) []string {
	t.Helper()
	c := newHTTPClient(t)
	out := make([]string, 0, n)
	for range n {
		resp, err := postChat(t, c, srv, chatBody("chaos", false))
		if err != nil {
			out = append(out, "reset")
			continue
		}
		_, err = readAll(t, resp)
		switch {
		case errors.Is(err, io.ErrUnexpectedEOF):
			out = append(out, "truncated")
		case err != nil:
			t.Errorf("unexpected read error: %v", err)
			out = append(out, "error")
		case resp.StatusCode == http.StatusTooManyRequests:
			out = append(out, fmt.Sprintf("429 after=%q ms=%q",
				resp.Header.Get("Retry-After"), resp.Header.Get("retry-after-ms")))
		default:
			out = append(out, fmt.Sprint(resp.StatusCode))
		}
	}
	return out
}

func TestChaosIsDeterministic(t *testing.T) {
	const n = 200
	runs := make([][]string, 3)
	stats := make([]llmtest.Stats, 3)
	var wg sync.WaitGroup
	for i, seed := range []int64{42, 42, 7} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv := newServer(t, llmtest.WithSeed(seed), llmtest.WithChaos(testChaos))
			runs[i] = chaosOutcomes(t, srv, n)
			stats[i] = settled(t, srv)
		}()
	}
	wg.Wait()

	assert.Equal(t, runs[0], runs[1], "same seed, same outcomes")
	assert.NotEqual(t, runs[0], runs[2], "another seed, other outcomes")

	count := map[string]int{}
	for _, o := range runs[0] {
		switch o {
		case "200", "reset", "truncated":
			count[o]++
		case "500", "502", "503", "504":
			count["5xx"]++
		default:
			count["429"]++
		}
	}
	// Expected 100 / 30 / 30 / 20 / 20; the bounds allow for chance but
	// catch a wrong distribution.
	assert.InDelta(t, 100, count["200"], 35, "successes %v", count)
	assert.InDelta(t, 30, count["429"], 20, "rate limits %v", count)
	assert.InDelta(t, 30, count["5xx"], 20, "server errors %v", count)
	assert.InDelta(t, 20, count["reset"], 15, "resets %v", count)
	assert.InDelta(t, 20, count["truncated"], 15, "truncations %v", count)
	assert.Contains(t, runs[0], `429 after="1" ms=""`, "default hint of 10ms rounds up to 1s")
	assert.Contains(t, runs[0], `429 after="" ms="10"`)
	assert.Contains(t, runs[0], `429 after="" ms=""`)

	assert.Equal(t, n, stats[0].Requests)
	assert.Equal(t, count["200"], stats[0].Succeeded)
	assert.Equal(t, n-count["200"], stats[0].Faults)
	assert.Equal(t, 1, stats[0].MaxInFlight, "whatever the outcome, sequential requests never overlap")
}

func TestScriptTakesPrecedenceOverChaos(t *testing.T) {
	srv := newServer(t, llmtest.WithChaos(llmtest.Chaos{ServerError: 1}))
	srv.Script(llmtest.OK(), llmtest.Status(http.StatusTeapot))
	got := chaosOutcomes(t, srv, 3)
	assert.Equal(t, "200", got[0])
	assert.Equal(t, "418", got[1])
	assert.Contains(t, []string{"500", "502", "503", "504"}, got[2], "chaos once the script is used up")
}

func TestChaosCustomRetryAfter(t *testing.T) {
	srv := newServer(t, llmtest.WithSeed(1), llmtest.WithChaos(llmtest.Chaos{RateLimit: 1, RetryAfter: 2500 * time.Millisecond}))
	for _, o := range chaosOutcomes(t, srv, 30) {
		require.Contains(t, []string{`429 after="3" ms=""`, `429 after="" ms="2500"`, `429 after="" ms=""`}, o)
	}
}
