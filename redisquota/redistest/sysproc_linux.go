package redistest

import "syscall"

// sysProcAttr makes the kernel kill redis-server when the process that
// started it dies, so a test binary or benchmark killed outright (SIGKILL,
// a CI timeout) leaves no server behind. A graceful exit runs Close.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
