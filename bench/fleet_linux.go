package main

import "syscall"

// childProcAttr has the kernel kill a fleet replica when the bench dies,
// however it dies, so an interrupted run leaves no process behind.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
