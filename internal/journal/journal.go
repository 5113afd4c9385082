// Package journal is an append-only JSON Lines file that survives being cut
// off mid-write: one record per line, a header line that marks the file as
// ours, an advisory lock so only one process appends at a time, and fsync
// in batches and on Close. A new journal is durable from the start: its
// header and the directory entry naming it are synced before Open returns.
package journal

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ErrLocked is returned by Open when another process holds the journal.
var ErrLocked = errors.New("journal is in use by another process")

// ErrForeign is returned by Open for a file that is not a journal.
var ErrForeign = errors.New("not an llmdrain journal")

// header is the first line of every journal; its presence tells our file
// from someone else's, which Open refuses to touch.
const header = `{"llmdrain_journal":1}`

// Sync policy: records are flushed to stable storage every syncEvery
// appends or syncInterval, whichever comes first, and always on Close.
const (
	syncEvery    = 64
	syncInterval = time.Second
)

// Journal appends records to a file. Its methods are safe for concurrent
// use.
type Journal struct {
	mu       sync.Mutex
	f        *os.File
	unsynced int
	lastSync time.Time
	err      error // first write or sync error; later appends return it
}

// Open opens or creates the journal at path, locks it, and returns it with
// the records already in it, oldest first. A torn last line (the process or
// machine died mid-write) is dropped from the file and not returned. A file
// that is not a journal, or whose complete lines do not parse, is an error
// and is left untouched.
//
// When it writes a new journal's header, Open syncs the file and then its
// directory (where the platform allows: see syncDir), so that a power cut
// cannot lose the file itself, and with it the records synced into it
// later. If the directory cannot be synced, Open fails and leaves the file
// empty, so that the next Open does it all again.
func Open(path string) (*Journal, []json.RawMessage, error) {
	var recs []json.RawMessage
	j, err := open(path, syncDir, func(rec []byte) error {
		recs = append(recs, json.RawMessage(bytes.Clone(rec)))
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return j, recs, nil
}

// OpenEach is Open for a journal too large to hold in memory: it reads the
// file line by line and hands each record to each, oldest first, instead
// of returning them. The slice is valid only during the call. Records are
// handed over as they are read, before the rest of the file is checked:
// when OpenEach returns an error (a later line that does not parse, or
// each's own error, returned as it is), the caller must discard what it
// was handed. The file is then left untouched.
func OpenEach(path string, each func(rec []byte) error) (*Journal, error) {
	return open(path, syncDir, each)
}

// open is OpenEach with the directory sync as a parameter, for tests.
func open(path string, syncDir func(dir string) error, each func([]byte) error) (*Journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := lock(f); err != nil {
		f.Close()
		return nil, err
	}
	keep, err := read(f, each)
	if err != nil {
		unlock(f)
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Truncate(keep); err != nil {
		unlock(f)
		f.Close()
		return nil, err
	}
	if _, err := f.Seek(keep, io.SeekStart); err != nil {
		unlock(f)
		f.Close()
		return nil, err
	}
	j := &Journal{f: f, lastSync: time.Now()}
	if keep == 0 {
		// A new (or empty) journal. fsync of the file makes its contents
		// durable but not the directory entry that names it; without the
		// second sync, a power cut could take the whole file away,
		// completions synced into it included.
		if _, err := f.WriteString(header + "\n"); err != nil {
			j.Close()
			return nil, err
		}
		if err := f.Sync(); err != nil {
			j.Close()
			return nil, err
		}
		if err := syncDir(filepath.Dir(path)); err != nil {
			_ = f.Truncate(0)
			j.Close()
			return nil, fmt.Errorf("syncing the directory of %s: %w", path, err)
		}
	}
	return j, nil
}

// read parses the file, handing each record to each, and returns the
// length of its intact part: everything up to the last newline. It reads
// line by line: memory is bounded by the longest line, not the file.
func read(f *os.File, each func([]byte) error) (int64, error) {
	r := bufio.NewReaderSize(f, 64<<10)
	var (
		intact int64
		line   int
		buf    []byte
	)
	for {
		chunk, err := r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			buf = append(buf, chunk...)
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if buf != nil {
			chunk = append(buf, chunk...)
			buf = nil
		}
		if errors.Is(err, io.EOF) {
			// A last line without its newline is torn: dropped. So is a
			// torn header, which leaves an empty journal.
			if line == 0 && len(chunk) > 0 && !(len(chunk) <= len(header) && bytes.HasPrefix([]byte(header), chunk)) {
				return 0, ErrForeign
			}
			return intact, nil
		}
		line++
		intact += int64(len(chunk))
		rec := bytes.TrimSpace(chunk)
		switch {
		case line == 1:
			if !bytes.Equal(rec, []byte(header)) {
				return 0, ErrForeign
			}
		case len(rec) == 0:
		case !json.Valid(rec):
			return 0, fmt.Errorf("%w: line %d is not JSON", ErrForeign, line)
		default:
			if err := each(rec); err != nil {
				return 0, err
			}
		}
	}
}

// Append writes one record as a line. The line reaches the operating
// system at once (so a crash of the process loses nothing) and stable
// storage at the next sync.
func (j *Journal) Append(rec any) error {
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err != nil {
		return j.err
	}
	if j.f == nil {
		return os.ErrClosed
	}
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		j.err = err
		return err
	}
	j.unsynced++
	if j.unsynced >= syncEvery || time.Since(j.lastSync) >= syncInterval {
		return j.syncLocked()
	}
	return nil
}

func (j *Journal) syncLocked() error {
	if err := j.f.Sync(); err != nil {
		j.err = err
		return err
	}
	j.unsynced, j.lastSync = 0, time.Now()
	return nil
}

// Close syncs, unlocks and closes the journal. It returns the first error
// met by any Append, sync or the close itself.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return j.err
	}
	if j.err == nil {
		_ = j.syncLocked()
	}
	unlock(j.f)
	if err := j.f.Close(); err != nil && j.err == nil {
		j.err = err
	}
	j.f = nil
	return j.err
}
