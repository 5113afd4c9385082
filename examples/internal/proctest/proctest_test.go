package proctest

import "testing"

func TestEnvProblem(t *testing.T) {
	for _, tc := range []struct {
		env []string
		ok  bool
	}{
		{nil, true},
		{[]string{"FAKE_LLM_LATENCY=0s"}, true},
		{[]string{"HOLYSHEEP_API_KEY=", "HOLYSHEEP_BASE_URL=https://api.example.com/v1"}, true},
		{[]string{"HOLYSHEEP_API_KEY=sk-test", "HOLYSHEEP_BASE_URL=http://127.0.0.1:4000/v1"}, true},
		{[]string{"HOLYSHEEP_API_KEY=sk-test", "HOLYSHEEP_BASE_URL=http://[::1]:4000/v1"}, true},
		{[]string{"HOLYSHEEP_API_KEY=sk-test", "HOLYSHEEP_BASE_URL=http://localhost:4000/v1"}, true},
		{[]string{"HOLYSHEEP_API_KEY=sk-test"}, false},
		{[]string{"HOLYSHEEP_API_KEY=sk-test", "HOLYSHEEP_BASE_URL="}, false},
		{[]string{"HOLYSHEEP_API_KEY=sk-test", "HOLYSHEEP_BASE_URL=https://api.holysheep.ai/v1"}, false},
		{[]string{"HOLYSHEEP_BASE_URL=http://127.0.0.1:4000/v1", "HOLYSHEEP_API_KEY=sk-test", "HOLYSHEEP_BASE_URL=https://10.0.0.1/v1"}, false},
	} {
		if got := envProblem(tc.env); (got == "") != tc.ok {
			t.Errorf("envProblem(%q) = %q, want ok %v", tc.env, got, tc.ok)
		}
	}
}
