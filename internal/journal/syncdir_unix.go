//go:build unix

package journal

import (
	"errors"
	"os"
	"syscall"
)

// syncDir flushes dir's entries to stable storage, so that a file created
// in it survives a power cut. File systems that cannot sync a directory
// (EINVAL, or not supported) are taken as they are: there is nothing more
// to do there. On macOS fsync does not flush the drive's own cache
// (F_FULLFSYNC would), for directories as for files.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, errors.ErrUnsupported) {
		return err
	}
	return nil
}
