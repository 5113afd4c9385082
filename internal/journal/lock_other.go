//go:build !unix

package journal

import "os"

// lock is a no-op where flock is unavailable: two processes sharing a
// journal there are not detected.
func lock(*os.File) error { return nil }

func unlock(*os.File) {}
