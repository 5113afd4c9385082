// Package header reads HTTP headers on the hot path.
package header

import "net/http"

// Value is h.Get(key) for a key already in canonical form ("Content-Type",
// not "content-type"), without the canonicalisation Get does on every
// call: net/http stores the headers it reads, and Header.Set the ones it
// is given, under their canonical keys, so for such a key the two agree.
func Value(h http.Header, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}
