package offline

import (
	"testing"

	"github.com/llmdrain/llmdrain"
)

func TestRealEndpoint(t *testing.T) {
	for _, tc := range []struct{ env, want string }{
		{"", llmdrain.DefaultBaseURL},
		{"http://127.0.0.1:4000/v1", "http://127.0.0.1:4000/v1"},
		{"https://sk-secret@api.example.com/v1", "https://xxxxx@api.example.com/v1"},
		{"https://user:sk-secret@api.example.com/v1", "https://xxxxx@api.example.com/v1"},
		{"https://api.example.com/v1?api-key=sk-secret", "https://api.example.com/v1?xxxxx"},
		{"https://api.example.com/v1#sk-secret", "https://api.example.com/v1#xxxxx"},
	} {
		t.Setenv(llmdrain.EnvBaseURL, tc.env)
		if got := RealEndpoint(); got != tc.want {
			t.Errorf("RealEndpoint() with %s=%q = %q, want %q", llmdrain.EnvBaseURL, tc.env, got, tc.want)
		}
	}
}

func TestOnline(t *testing.T) {
	t.Setenv(llmdrain.EnvAPIKey, "")
	if Online() {
		t.Error("Online() with no key")
	}
	t.Setenv(llmdrain.EnvAPIKey, "sk-test")
	if !Online() {
		t.Error("not Online() with a key")
	}
}
