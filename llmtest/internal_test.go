package llmtest

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestChaosDraw(t *testing.T) {
	c := Chaos{RateLimit: 0.1, ServerError: 0.2, Reset: 0.05, Hang: 0.05, Truncate: 0.1}
	const n = 20000
	draw := func(seed uint64) []Fault {
		r := rand.New(rand.NewPCG(seed, 1))
		out := make([]Fault, n)
		for i := range out {
			out[i] = c.draw(r)
		}
		return out
	}
	a, b, other := draw(3), draw(3), draw(4)
	assert.Equal(t, a, b, "same seed, same faults")
	assert.NotEqual(t, a, other)

	kinds := map[faultKind]int{}
	statuses := map[int]int{}
	hints := map[string]int{}
	for _, f := range a {
		kinds[f.kind]++
		if f.kind == kindStatus {
			statuses[f.status]++
		}
		if f.status == 429 {
			switch {
			case f.header.Get("Retry-After") != "":
				hints["seconds"]++
			case f.header.Get("retry-after-ms") != "":
				hints["ms"]++
			default:
				hints["none"]++
			}
		}
		if f.kind == kindTruncate {
			assert.Equal(t, truncateHalf, f.chunks)
		}
	}
	within := func(want float64, got int, what string) {
		t.Helper()
		// 25% relative is many standard deviations at these counts.
		assert.InDelta(t, want, float64(got), want/4, what)
	}
	within(0.5*n, kinds[kindOK], "success")
	within(0.3*n, kinds[kindStatus], "status")
	within(0.05*n, kinds[kindReset], "reset")
	within(0.05*n, kinds[kindHang], "hang")
	within(0.1*n, kinds[kindTruncate], "truncate")
	within(0.1*n, statuses[429], "429")
	for _, code := range []int{500, 502, 503, 504} {
		within(0.05*n, statuses[code], "server error")
	}
	for _, h := range []string{"seconds", "ms", "none"} {
		within(0.1*n/3, hints[h], "rate limit hint "+h)
	}
}

func TestChaosDisabledDrawsNothing(t *testing.T) {
	assert.False(t, Chaos{RetryAfter: time.Second}.enabled())
	assert.True(t, Chaos{Hang: 0.01}.enabled())
}

func TestJitter(t *testing.T) {
	const base = 100 * time.Millisecond
	sample := func(seed int64) []time.Duration {
		s := NewServer(WithLatency(base), WithJitter(0.5), WithSeed(seed))
		defer s.Close()
		out := make([]time.Duration, 2000)
		for i := range out {
			out[i] = s.nextLatency()
		}
		return out
	}
	a := sample(9)
	assert.Equal(t, a, sample(9), "same seed, same latencies")
	lo, hi := a[0], a[0]
	for _, d := range a {
		lo, hi = min(lo, d), max(hi, d)
	}
	assert.GreaterOrEqual(t, lo, base/2)
	assert.LessOrEqual(t, hi, base*3/2)
	assert.Less(t, lo, base*6/10, "spread reaches the low end")
	assert.Greater(t, hi, base*14/10, "spread reaches the high end")

	s := NewServer(WithLatency(base))
	defer s.Close()
	assert.Equal(t, base, s.nextLatency(), "no jitter unless asked")
}

func TestNextWord(t *testing.T) {
	for text, want := range map[string][]string{
		"":                   nil,
		"one":                {"one"},
		"You said: a b":      {"You ", "said: ", "a ", "b"},
		"You said: a  b\nc ": {"You ", "said: ", "a  ", "b\n", "c "},
		"  lead":             {"  ", "lead"},
	} {
		var got []string
		for rest := text; rest != ""; {
			var w string
			w, rest = nextWord(rest)
			got = append(got, w)
		}
		assert.Equal(t, want, got, "%q", text)
		assert.Equal(t, len(want), countWords(text), "%q", text)
	}
}

func TestFaultWithHeaderCopies(t *testing.T) {
	base := Status(503).WithHeader("A", "1")
	derived := base.WithHeader("B", "2")
	assert.Empty(t, base.header.Get("B"), "WithHeader must not change its receiver")
	assert.Equal(t, "1", derived.header.Get("A"))
	assert.Equal(t, "2", derived.header.Get("B"))
}

// A prompt's history holds at most twice HistoryLimit exchanges, however
// many are recorded, and History gives the last HistoryLimit in order.
func TestRememberBoundsAPromptsHistory(t *testing.T) {
	s := &Server{history: make(map[string][]Exchange)}
	for i := range 5*HistoryLimit + 3 {
		s.remember("p", Exchange{Status: i})
		if n := len(s.history["p"]); n >= 2*HistoryLimit {
			t.Fatalf("after %d exchanges the history holds %d", i+1, n)
		}
	}
	h := s.History("p")
	if len(h) != HistoryLimit {
		t.Fatalf("History gave %d exchanges, want %d", len(h), HistoryLimit)
	}
	for i, e := range h {
		if want := 4*HistoryLimit + 3 + i; e.Status != want {
			t.Fatalf("exchange %d is number %d, want %d", i, e.Status, want)
		}
	}
}
