package rollout

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmdrain/llmdrain/llmtest"
)

// TestRefusedUpstream pins down which failed requests the rolling-restart
// test forgives: only a 429 passed on with a hint after every attempt the
// client may make was itself a 429.
func TestRefusedUpstream(t *testing.T) {
	at := time.Unix(0, 0)
	ex := func(statuses ...int) []llmtest.Exchange {
		var h []llmtest.Exchange
		for i, s := range statuses {
			h = append(h, llmtest.Exchange{Received: at.Add(time.Duration(i) * time.Second), Status: s})
		}
		return h
	}
	refused := result{fail: failStatus + " 429", retryAfter: "1"}
	cases := []struct {
		name string
		r    result
		h    []llmtest.Exchange
		want bool
	}{
		{"four 429s", refused, ex(429, 429, 429, 429), true},
		{"retries cut short", refused, ex(429, 429), false},
		{"more attempts than the client makes", refused, ex(429, 429, 429, 429, 429), false},
		{"one attempt was not a 429", refused, ex(429, 503, 429, 429), false},
		{"no hint passed on", result{fail: failStatus + " 429"}, ex(429, 429, 429, 429), false},
		{"a 502 is never the upstream's refusal", result{fail: failStatus + " 502", retryAfter: "1"}, ex(429, 429, 429, 429), false},
		{"a cut stream", result{fail: failCut}, ex(429, 429, 429, 429), false},
	}
	for _, c := range cases {
		if got := refusedUpstream(c.r, c.h); got != c.want {
			t.Errorf("%s: refusedUpstream = %v, want %v", c.name, got, c.want)
		}
	}

	got := explain(ex(http.StatusTooManyRequests, http.StatusOK), at)
	for _, want := range []string{"attempt 1 at  0.00s: 429", "attempt 2 at  1.00s: 200, 1s after the previous one"} {
		if !strings.Contains(got, want) {
			t.Errorf("explain = %q, want it to contain %q", got, want)
		}
	}
	if got := explain(nil, at); !strings.Contains(got, "never saw") {
		t.Errorf("explain(nil) = %q", got)
	}
}
