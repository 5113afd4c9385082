package llmdrain

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks every test leaves no goroutine behind. The test binary
// doubles as the child process of the signal tests: with childEnv set it
// runs that child instead of the tests.
func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	goleak.VerifyTestMain(m)
}
