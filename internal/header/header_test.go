package header

import (
	"net/http"
	"net/textproto"
	"testing"
)

// Value must agree with Get for every canonical key, whether the header is
// absent, empty, set once or added twice.
func TestValueAgreesWithGet(t *testing.T) {
	h := http.Header{}
	h.Set("content-type", "text/event-stream")
	h.Add("X-Ratelimit-Limit-Requests", "60")
	h.Add("X-Ratelimit-Limit-Requests", "61")
	h["Accept"] = []string{}
	for _, key := range []string{"Content-Type", "X-Ratelimit-Limit-Requests", "Accept", "Retry-After"} {
		if key != textproto.CanonicalMIMEHeaderKey(key) {
			t.Fatalf("%q is not canonical", key)
		}
		if got, want := Value(h, key), h.Get(key); got != want {
			t.Errorf("Value(%q) = %q, Get = %q", key, got, want)
		}
	}
}
