// Package rollout tests a Kubernetes-style rolling restart on one machine:
// three replicas of examples/server behind haproxy, which health-checks
// their /readyz as a readiness probe would, under steady plain and
// streamed load, each replica restarted in turn several times. Then the
// same with rollout/naive, a server that dies on SIGTERM, as the control.
// See TestRollingRestart and RELIABILITY.md at the repository root.
//
// The package has tests only; it needs haproxy (apt-get install haproxy).
package rollout

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no test leaves a goroutine behind: no load worker,
// no process waiter, no connection of the fake LLM.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
