//go:build !linux

package main

import "syscall"

// childProcAttr: outside Linux a replica outlives a bench killed outright;
// an interrupt from the terminal still reaches the whole process group.
func childProcAttr() *syscall.SysProcAttr { return nil }
