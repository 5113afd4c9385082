package batchfile

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Output is an output file opened for appending results, each custom_id at
// most once, across runs. Its methods are safe for concurrent use.
type Output struct {
	mu   sync.Mutex // guards w, done, n, bad
	f    *os.File
	w    *bufio.Writer
	path string
	done map[[16]byte]struct{}
	n    int // results in the file
	bad  int // of them, failures
	torn int64
}

// OpenOutput opens or creates the output file at path and reads the
// custom_ids already in it, so that a resumed batch writes none twice. A
// torn last line (the process died mid-write) is cut off and its task is
// not counted as written: it runs again. A file whose complete lines are
// not results is an error, and is left untouched.
func OpenOutput(path string) (*Output, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	o := &Output{f: f, path: path, done: make(map[[16]byte]struct{})}
	keep, err := o.scan()
	if err == nil {
		if st, serr := f.Stat(); serr == nil && st.Size() > keep {
			o.torn = st.Size() - keep
			err = f.Truncate(keep)
		}
	}
	if err == nil {
		_, err = f.Seek(keep, io.SeekStart)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	o.w = bufio.NewWriterSize(f, 64<<10)
	return o, nil
}

// scan reads the results in the file and returns the length of its intact
// part.
func (o *Output) scan() (int64, error) {
	r := bufio.NewReaderSize(o.f, 64<<10)
	var off int64
	for n := 1; ; n++ {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			return off, nil // a last line without a newline is torn
		}
		if err != nil {
			return 0, err
		}
		off += int64(len(line))
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var res Result
		if err := json.Unmarshal(line, &res); err != nil || res.CustomID == "" {
			return 0, fmt.Errorf("line %d is not a batch result; not appending to it", n)
		}
		o.done[key(res.CustomID)] = struct{}{}
		o.n++
		if res.failed() {
			o.bad++
		}
	}
}

// Has reports whether the file holds a result for customID.
func (o *Output) Has(customID string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	_, ok := o.done[key(customID)]
	return ok
}

// Len is the number of results in the file.
func (o *Output) Len() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n
}

// Failed is the number of results in the file that are failures: an
// error, or a response whose status is not 200.
func (o *Output) Failed() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.bad
}

// Torn is how many bytes of a torn last line OpenOutput cut off.
func (o *Output) Torn() int64 { return o.torn }

// Write appends a result, unless the file already holds one for its
// custom_id. The line reaches the operating system before Write returns,
// so that it survives the process.
func (o *Output) Write(res Result) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	k := key(res.CustomID)
	if _, dup := o.done[k]; dup {
		return nil
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if _, err := o.w.Write(append(b, '\n')); err != nil {
		return err
	}
	if err := o.w.Flush(); err != nil {
		return err
	}
	o.done[k] = struct{}{}
	o.n++
	if res.failed() {
		o.bad++
	}
	return nil
}

// Close syncs and closes the file.
func (o *Output) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	err := o.w.Flush()
	if serr := o.f.Sync(); err == nil {
		err = serr
	}
	if cerr := o.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// MergeReport says what Merge found.
type MergeReport struct {
	Written int      // results written, in input order
	Missing []string // custom_ids of the input with no result, in input order
	Extra   int      // results whose custom_id is not in the input (not written)
}

// Merge writes to w the results of the output files (the shards'), in the
// order of the input file's lines, and reports the custom_ids that have no
// result. A custom_id with results in two files is an error (the shards
// overlapped: the count changed between runs?). Merge keeps an index of
// the results, not the results: it reads each again where the index says.
func Merge(input io.Reader, outputs []string, w io.Writer) (MergeReport, error) {
	var rep MergeReport
	type loc struct {
		file     int32
		off, len int64
	}
	index := make(map[[16]byte]loc)
	files := make([]*os.File, len(outputs))
	defer func() {
		for _, f := range files {
			if f != nil {
				f.Close()
			}
		}
	}()
	for i, path := range outputs {
		f, err := os.Open(path)
		if err != nil {
			return rep, err
		}
		files[i] = f
		r := bufio.NewReaderSize(f, 64<<10)
		var off int64
		for n := 1; ; n++ {
			line, err := r.ReadBytes('\n')
			if errors.Is(err, io.EOF) {
				break // a torn last line is not a result
			}
			if err != nil {
				return rep, fmt.Errorf("%s: %w", path, err)
			}
			start := off
			off += int64(len(line))
			if len(bytes.TrimSpace(line)) == 0 {
				continue
			}
			var res struct {
				CustomID string `json:"custom_id"`
			}
			if err := json.Unmarshal(line, &res); err != nil || res.CustomID == "" {
				return rep, fmt.Errorf("%s: line %d is not a batch result", path, n)
			}
			k := key(res.CustomID)
			if prev, dup := index[k]; dup {
				return rep, fmt.Errorf("custom_id %q has results in %s and %s", res.CustomID, outputs[prev.file], path)
			}
			index[k] = loc{file: int32(i), off: start, len: int64(len(line))}
		}
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	buf := make([]byte, 0, 64<<10)
	used := 0
	for n, line := range lines(input) {
		req, err := parseLine(n, line)
		if err != nil {
			return rep, err
		}
		l, ok := index[key(req.CustomID)]
		if !ok {
			rep.Missing = append(rep.Missing, req.CustomID)
			continue
		}
		used++
		if cap(buf) < int(l.len) {
			buf = make([]byte, l.len)
		}
		buf = buf[:l.len]
		if _, err := files[l.file].ReadAt(buf, l.off); err != nil {
			return rep, fmt.Errorf("%s: %w", outputs[l.file], err)
		}
		if _, err := bw.Write(buf); err != nil {
			return rep, err
		}
		rep.Written++
	}
	rep.Extra = len(index) - used
	return rep, bw.Flush()
}
