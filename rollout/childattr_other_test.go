//go:build !linux

package rollout

import "syscall"

// childAttr: only Linux can tie a child's life to the test process; on
// other systems the cleanups alone stop the children.
func childAttr() *syscall.SysProcAttr { return nil }
