package rollout

import "syscall"

// childAttr makes the kernel kill a child if the test process dies without
// running its cleanups (go test -timeout panics, or a SIGKILL), so no
// replica or haproxy outlives a run.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
