package journal

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type rec struct {
	N int `json:"n"`
}

func decode(t *testing.T, raws []json.RawMessage) []int {
	t.Helper()
	var ns []int
	for _, r := range raws {
		var v rec
		require.NoError(t, json.Unmarshal(r, &v))
		ns = append(ns, v.N)
	}
	return ns
}

func TestAppendAndReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, recs, err := Open(path)
	require.NoError(t, err)
	assert.Empty(t, recs)
	for n := range 100 { // crosses syncEvery
		require.NoError(t, j.Append(rec{n}))
	}
	require.NoError(t, j.Close())
	require.NoError(t, j.Close(), "Close is idempotent")

	j, recs, err = Open(path)
	require.NoError(t, err)
	defer j.Close()
	assert.Len(t, decode(t, recs), 100)
	assert.Equal(t, 99, decode(t, recs)[99])
}

func TestTornTailDropped(t *testing.T) {
	for name, tail := range map[string]string{
		"half record": `{"n":`,
		"no newline":  `{"n":7}`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "j")
			j, _, err := Open(path)
			require.NoError(t, err)
			require.NoError(t, j.Append(rec{1}))
			require.NoError(t, j.Close())
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteString(tail)
			require.NoError(t, err)
			require.NoError(t, f.Close())

			j, recs, err := Open(path)
			require.NoError(t, err)
			assert.Equal(t, []int{1}, decode(t, recs))
			require.NoError(t, j.Append(rec{2}))
			require.NoError(t, j.Close())
			j, recs, err = Open(path)
			require.NoError(t, err)
			defer j.Close()
			assert.Equal(t, []int{1, 2}, decode(t, recs))
		})
	}
}

func TestTornHeader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	require.NoError(t, os.WriteFile(path, []byte(`{"llmdrain_jou`), 0o600))
	j, recs, err := Open(path)
	require.NoError(t, err)
	assert.Empty(t, recs)
	require.NoError(t, j.Append(rec{5}))
	require.NoError(t, j.Close())
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, header+"\n"+`{"n":5}`+"\n", string(data))
}

func TestForeignFileUntouched(t *testing.T) {
	for name, content := range map[string]string{
		"text":          "hello\n",
		"json":          `{"a":1}` + "\n",
		"corrupt inner": header + "\nnot json\n" + `{"n":1}` + "\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "j")
			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			_, _, err := Open(path)
			assert.ErrorIs(t, err, ErrForeign)
			data, rerr := os.ReadFile(path)
			require.NoError(t, rerr)
			assert.Equal(t, content, string(data))
			// The failed Open released its lock.
			j, _, err := Open(path)
			assert.ErrorIs(t, err, ErrForeign)
			assert.Nil(t, j)
		})
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, _, err := Open(path)
	require.NoError(t, err)
	_, _, err = Open(path)
	assert.ErrorIs(t, err, ErrLocked)
	require.NoError(t, j.Close())
	j, _, err = Open(path)
	require.NoError(t, err)
	require.NoError(t, j.Close())
}

func TestAppendAfterCloseFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, _, err := Open(path)
	require.NoError(t, err)
	require.NoError(t, j.Close())
	assert.Error(t, j.Append(rec{1}))
}

// TestNewJournalSyncsDirectory: creating a journal syncs its directory
// after the header is written, and only then; reopening does not. A unit
// test cannot cut the power: it checks the order of the calls, not that
// the disk kept anything.
func TestNewJournalSyncsDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "fresh", "dir")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	path := filepath.Join(dir, "j")
	var synced []string
	hook := func(d string) error {
		data, err := os.ReadFile(path)
		require.NoError(t, err)
		assert.Equal(t, header+"\n", string(data), "the header is written before the directory is synced")
		synced = append(synced, d)
		return nil
	}
	j, _, err := openRecs(t, path, hook)
	require.NoError(t, err)
	assert.Equal(t, []string{dir}, synced)
	require.NoError(t, j.Append(rec{1}))
	require.NoError(t, j.Close())

	j, recs, err := openRecs(t, path, hook)
	require.NoError(t, err)
	assert.Equal(t, []int{1}, decode(t, recs))
	assert.Len(t, synced, 1, "an existing journal's directory entry is already durable")
	require.NoError(t, j.Close())
}

// TestDirectorySyncFailure: when the directory cannot be synced, Open
// fails and leaves an empty file, so the next Open syncs it again.
func TestDirectorySyncFailure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	broken := errors.New("EIO")
	_, err := open(path, func(string) error { return broken }, nopEach)
	assert.ErrorIs(t, err, broken)
	data, rerr := os.ReadFile(path)
	require.NoError(t, rerr)
	assert.Empty(t, data)

	calls := 0
	j, err := open(path, func(string) error { calls++; return nil }, nopEach)
	require.NoError(t, err, "the failed Open released its lock")
	assert.Equal(t, 1, calls)
	require.NoError(t, j.Close())
}

// TestCreateInFreshDirectory runs the real directory sync.
func TestCreateInFreshDirectory(t *testing.T) {
	assert.NoError(t, syncDir(t.TempDir()))
	path := filepath.Join(t.TempDir(), "new", "j")
	require.NoError(t, os.Mkdir(filepath.Dir(path), 0o755))
	j, _, err := Open(path)
	require.NoError(t, err)
	require.NoError(t, j.Close())
}

func nopEach([]byte) error { return nil }

// openRecs is Open with a directory sync hook.
func openRecs(t *testing.T, path string, syncDir func(string) error) (*Journal, []json.RawMessage, error) {
	t.Helper()
	var recs []json.RawMessage
	j, err := open(path, syncDir, func(rec []byte) error {
		recs = append(recs, json.RawMessage(append([]byte(nil), rec...)))
		return nil
	})
	return j, recs, err
}

// TestOpenEachStreams: OpenEach hands over every record, lines longer than
// its read buffer included, drops a torn tail, and stops at the callback's
// error, leaving the file untouched.
func TestOpenEachStreams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "j")
	j, _, err := Open(path)
	require.NoError(t, err)
	long := make([]byte, 200<<10)
	for i := range long {
		long[i] = 'x'
	}
	require.NoError(t, j.Append(rec{1}))
	require.NoError(t, j.Append(map[string]any{"n": 2, "pad": string(long)}))
	require.NoError(t, j.Append(rec{3}))
	require.NoError(t, j.Close())
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"n":4`)
	require.NoError(t, err)
	require.NoError(t, f.Close())

	var ns []int
	j, err = OpenEach(path, func(raw []byte) error {
		var v rec
		require.NoError(t, json.Unmarshal(raw, &v))
		ns = append(ns, v.N)
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, []int{1, 2, 3}, ns)
	require.NoError(t, j.Close())

	before, err := os.ReadFile(path)
	require.NoError(t, err)
	stop := errors.New("stop")
	_, err = OpenEach(path, func([]byte) error { return stop })
	assert.ErrorIs(t, err, stop)
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, before, after)
}
