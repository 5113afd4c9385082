//go:build !linux

package redistest

import "syscall"

// sysProcAttr: outside Linux there is no parent-death signal; Close (run by
// New's cleanup, or the caller) is what stops the server.
func sysProcAttr() *syscall.SysProcAttr { return nil }
