package journal

import (
	"encoding/json"
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
