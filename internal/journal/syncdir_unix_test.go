//go:build unix

package journal

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestSyncDirReportsMissingDirectory(t *testing.T) {
	assert.Error(t, syncDir(filepath.Join(t.TempDir(), "missing")))
}
