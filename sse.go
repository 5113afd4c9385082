package llmdrain

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/llmdrain/llmdrain/internal/watchdog"
)

// maxDoneLine bounds the bytes kept of one line. A "data: [DONE]" line is 12
// bytes; one padded with more surrounding space than this is not recognised
// and its stream is reported truncated, the safe direction.
const maxDoneLine = 256

// sseWatcher watches the bytes of a server-sent-event stream go by, over
// arbitrary chunk boundaries. It records whether a "data: [DONE]" line has
// been seen, matching the line exactly as go-openai's stream reader does:
// lines end at '\n', surrounding space is trimmed, then "data:", optional
// space, and "[DONE]". It kicks the stream's idle watchdog at each data
// line, and follows whether the last event that says so carried a
// finish_reason: a chat stream that ends cleanly after one is complete,
// even without [DONE], as several providers end theirs.
type sseWatcher struct {
	line     []byte // start of the current line, at most maxDoneLine bytes
	overflow bool   // the current line is too long to be [DONE]
	done     bool
	// mustEnd: a chat or completions stream, which must end with [DONE]
	// or after a finish_reason to be complete.
	mustEnd bool
	// finished: the last data event with a "finish_reason" had one set;
	// events without the key (a usage chunk) leave it as it is.
	finished bool
	fin      finishScan         // the current line's finish_reason values
	wd       *watchdog.Watchdog // kicked at each data line; nil: none
}

func (w *sseWatcher) Write(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.keep(p)
			return
		}
		w.keep(p[:i])
		w.endLine()
		p = p[i+1:]
	}
}

// endLine judges the line that just ended.
func (w *sseWatcher) endLine() {
	if isDataLine(w.line) {
		w.wd.Kick()
		switch {
		case !w.overflow && isDoneLine(w.line):
			w.done = true
		case w.fin.null:
			w.finished = false
		case w.fin.set:
			w.finished = true
		}
	}
	w.line, w.overflow, w.fin = w.line[:0], false, finishScan{}
}

// isDataLine reports whether a line starting with head is a data line, as
// go-openai tells them: space trimmed, then "data:".
func isDataLine(head []byte) bool {
	i := 0
	for i < len(head) && (head[i] == ' ' || head[i] == '\t' || head[i] == '\r' || head[i] == '\n' || head[i] == '\v' || head[i] == '\f') {
		i++
	}
	return bytes.HasPrefix(head[i:], []byte("data:"))
}

func (w *sseWatcher) keep(p []byte) {
	w.fin.scan(p)
	if w.overflow {
		return
	}
	if room := maxDoneLine - len(w.line); len(p) > room {
		w.line = append(w.line, p[:room]...)
		w.overflow = true
		return
	}
	w.line = append(w.line, p...)
}

// finishKey is a finish_reason key in JSON but for its opening quote:
// searched from its 'f', as a search from '"' would stop at every string.
var finishKey = []byte(`finish_reason"`)

// finishWindow is how much of a line finishScan carries over a chunk
// boundary: a finish_reason key and the start of its value, with a little
// space around its colon. One padded with more is not seen, and its stream
// is reported truncated if it has no [DONE], the safe direction.
const finishWindow = 40

// finishScan finds the finish_reason values of one line fed to it in
// pieces, cheaply: bytes.Index for the key, the value judged by its first
// bytes. A key inside a JSON string is preceded by a backslash (its quote
// is escaped) and is skipped.
type finishScan struct {
	set, null bool // a value that is a non-empty string; one that is null or ""
	carry     [finishWindow]byte
	n         int // carry[:n] is the end of what came before
}

func (f *finishScan) scan(p []byte) {
	if f.n > 0 {
		// Across the boundary: the carry and the start of p.
		var joint [2 * finishWindow]byte
		k := copy(joint[:], f.carry[:f.n])
		k += copy(joint[k:], p[:min(len(p), finishWindow)])
		f.find(joint[:k])
	}
	f.find(p)
	if len(p) >= finishWindow {
		f.n = copy(f.carry[:], p[len(p)-finishWindow:])
		return
	}
	// Keep the last finishWindow bytes of carry and p.
	keep := min(f.n, finishWindow-len(p))
	copy(f.carry[:], f.carry[f.n-keep:f.n])
	f.n = keep + copy(f.carry[keep:], p)
}

func (f *finishScan) find(b []byte) {
	for off := 0; ; {
		i := bytes.Index(b[off:], finishKey)
		if i < 0 {
			return
		}
		i += off
		off = i + len(finishKey)
		if i == 0 || b[i-1] != '"' || (i > 1 && b[i-2] == '\\') {
			continue // no key, or one cut at the boundary, or in a string
		}
		j := skipJSONSpace(b, off)
		if j >= len(b) || b[j] != ':' {
			continue
		}
		j = skipJSONSpace(b, j+1)
		switch {
		case j >= len(b): // the value is in what comes next
		case b[j] == 'n':
			f.null = true
		case b[j] == '"' && j+1 < len(b):
			if b[j+1] == '"' {
				f.null = true
			} else {
				f.set = true
			}
		}
	}
}

// isDoneLine mirrors go-openai: bytes.TrimSpace, then the regexp `^data:\s*`
// removed, then a comparison with "[DONE]". RE2's \s is [\t\n\f\r ].
func isDoneLine(line []byte) bool {
	line = bytes.TrimSpace(line)
	if !bytes.HasSuffix(line, doneEvent) {
		return false // every chunk, told cheaply
	}
	rest, ok := bytes.CutPrefix(line, []byte("data:"))
	return ok && bytes.Equal(bytes.TrimLeft(rest, "\t\n\f\r "), []byte("[DONE]"))
}

// maxSSELine bounds the bytes of one line an sseScrubber holds to pass it
// on whole: far above any event of a chat stream.
const maxSSELine = 1 << 20

// sseScrubber is the body of a successful stream as go-openai reads it, the
// API key taken out of it. go-openai reads a stream line by line, and turns
// an error event, `data: {"error": ...}`, together with any line that is not
// a data line (it accumulates those over the whole stream), into the error
// Recv returns, with JSON escapes decoded. So the key is scrubbed from every
// line, raw, and from the strings of what go-openai would decode as an
// error: see sseErrors.
//
// To see each line whole it passes lines on only once their '\n' has come
// (or the stream ended): go-openai's bufio reader waits for it anyway. A
// line longer than maxSSELine is passed on as it comes, the key scrubbed
// from its bytes over the cuts, if it is a data line; if it is one go-openai
// would take into an error, its content is dropped (passed on as an empty
// line). The common case costs one copy: lines that need no change are
// passed on from the read buffer.
type sseScrubber struct {
	rc      io.ReadCloser
	key     []byte
	buf     []byte // buf[r:w] is read from rc, not yet passed on
	r, w    int
	scanned int    // buf[r:scanned] holds no '\n'
	out     []byte // to return next
	pending []byte // to return after out: a line's replacement
	err     error  // rc's, returned once buf is passed on
	// malformed: a data line that is not JSON was met; the stream ends
	// before it with ErrMalformedEvent.
	malformed bool
	long      int // longNone, or how the current line, too long to hold, is passed on
	errs      sseErrors
}

const (
	longNone = iota
	longPass // a data line: passed on as it comes, scrubbed
	longDrop // a line go-openai accumulates: content dropped
)

func newSSEScrubber(rc io.ReadCloser, key secret) *sseScrubber {
	return &sseScrubber{rc: rc, key: []byte(key), buf: make([]byte, 4<<10)}
}

func (s *sseScrubber) Read(p []byte) (int, error) {
	for len(s.out) == 0 {
		if !s.next() {
			return 0, s.err
		}
	}
	n := copy(p, s.out)
	s.out = s.out[n:]
	return n, nil
}

func (s *sseScrubber) Close() error { return s.rc.Close() }

// next sets out to the next bytes to pass on, reading rc as needed, and
// reports false if there are none: the stream ended with s.err.
func (s *sseScrubber) next() bool {
	if s.pending != nil {
		s.out, s.pending = s.pending, nil
		return true
	}
	for {
		switch {
		case s.long != longNone:
			if out := s.passLong(); len(out) > 0 {
				s.out = out
				return true
			}
		case s.w-s.r >= maxSSELine && bytes.IndexByte(s.buf[s.scanned:s.w], '\n') < 0:
			s.long = longPass
			if accumulated(s.buf[s.r:s.w]) {
				s.long = longDrop
			}
			continue
		default:
			if out := s.passLines(); len(out) > 0 {
				s.out = out
				return true
			}
		}
		if s.err != nil {
			if s.r == s.w || s.long == longDrop {
				s.r = s.w
				return false
			}
			// An unterminated last line, which go-openai drops.
			s.out = scrub(s.buf[s.r:s.w], secret(s.key), false)
			s.r = s.w
			return true
		}
		s.fill()
	}
}

// passLines returns the whole lines at the start of buf[r:w] that need no
// change, or, if the first needs one, its replacement; nil if there is no
// whole line.
func (s *sseScrubber) passLines() []byte {
	start := s.r
	for {
		i := bytes.IndexByte(s.buf[s.scanned:s.w], '\n')
		if i < 0 {
			s.scanned = s.w
			return s.scrubRun(s.buf[start:s.r])
		}
		end := s.scanned + i + 1
		line := s.buf[s.r:end]
		s.r, s.scanned = end, end
		if repl, changed := s.line(line); changed {
			if s.malformed {
				// The stream ends before this line, with its error.
				s.err, s.r, s.scanned = ErrMalformedEvent, s.w, s.w
				return s.scrubRun(s.buf[start : end-len(line)])
			}
			if before := end - len(line); before > start {
				s.pending = repl
				return s.scrubRun(s.buf[start:before])
			}
			return repl
		}
	}
}

// scrubRun returns a run of whole lines that line passed unchanged with
// the key scrubbed from their bytes: looked for once per run, not per
// line. (A key holds no '\n', so none spans two lines.)
func (s *sseScrubber) scrubRun(run []byte) []byte {
	if bytes.Contains(run, s.key) {
		return scrub(run, secret(s.key), false)
	}
	return run
}

// line returns what go-openai is to get of a whole line, and whether that
// differs from the line.
func (s *sseScrubber) line(line []byte) ([]byte, bool) {
	trimmed := bytes.TrimSpace(line)
	payload, isData := cutData(trimmed)
	isErr := isData && bytes.HasPrefix(payload, errorEvent)
	if isData && !isErr {
		// A chunk or [DONE]: go-openai decodes it into the answer, never
		// into an error. Its bytes are scrubbed with the run it is in.
		// A chunk that is no JSON object would be a hole in the answer.
		if !objectShaped(payload) && !bytes.Equal(payload, doneEvent) {
			s.malformed = true
			return nil, true
		}
		return nil, false
	}
	if !isData {
		payload = trimmed
	}
	c, changed := s.errs.add(payload, s.key, isErr)
	if !changed {
		return nil, false
	}
	out := make([]byte, 0, len(c)+7)
	if isErr && len(c) > 0 {
		out = append(out, "data: "...)
	}
	out = append(out, c...)
	return append(out, '\n'), true
}

// passLong returns the next part of a line too long to hold, nil if none is
// ready yet.
func (s *sseScrubber) passLong() []byte {
	end, last := s.w, false
	if i := bytes.IndexByte(s.buf[s.scanned:s.w], '\n'); i >= 0 {
		end, last = s.scanned+i+1, true
	}
	seg := s.buf[s.r:end]
	s.scanned = end
	drop := s.long == longDrop
	if last {
		s.long = longNone
	}
	if drop {
		s.r = end
		if last {
			return []byte{'\n'}
		}
		return nil
	}
	out, held := scrubHold(seg, s.key, last)
	s.r = end - held
	return out
}

// fill reads more of rc into buf, making room first.
func (s *sseScrubber) fill() {
	if s.r > 0 {
		n := copy(s.buf, s.buf[s.r:s.w])
		s.scanned -= s.r
		s.r, s.w = 0, n
	}
	if s.w == len(s.buf) {
		s.buf = append(s.buf, make([]byte, min(len(s.buf), maxSSELine-len(s.buf)+1))...)
	}
	for range maxEmptyReads {
		n, err := s.rc.Read(s.buf[s.w:])
		s.w += n
		if err != nil {
			s.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	s.err = io.ErrNoProgress
}

// scrubHold returns seg with the key replaced, but for its last bytes that
// could be the start of a key cut at seg's end, unless seg ends its line;
// and how many bytes of seg it held back.
func scrubHold(seg, key []byte, last bool) ([]byte, int) {
	hold := func(rest []byte) int {
		if last {
			return 0
		}
		return min(len(key)-1, len(rest))
	}
	i := bytes.Index(seg, key)
	if i < 0 {
		h := hold(seg)
		return seg[:len(seg)-h], h
	}
	var out []byte
	for ; i >= 0; i = bytes.Index(seg, key) {
		out = append(append(out, seg[:i]...), "[redacted]"...)
		seg = seg[i+len(key):]
	}
	h := hold(seg)
	return append(out, seg[:len(seg)-h]...), h
}

// objectShaped reports whether payload has the shape of a JSON object, a
// '{' to a '}': what tells a chunk cut short (by a provider's encoder, a
// proxy splitting a line) in O(1), where validating every chunk would cost
// more than all the rest of the body's work. Damage inside an object is
// left to go-openai's decoder.
func objectShaped(payload []byte) bool {
	return len(payload) >= 2 && payload[0] == '{' && payload[len(payload)-1] == '}'
}

// doneEvent is the payload of the data line that ends a chat stream.
var doneEvent = []byte("[DONE]")

// ErrMalformedEvent is the error, matched with errors.Is, that reading a
// successful stream returns in place of a data event that is not a JSON
// object ('{' to '}'), as a provider's encoder or a proxy cutting a line
// in two may send. The
// stream ends there and its call is released: an event lost is a hole in
// the answer, which must not pass for complete (go-openai alone would
// return a JSON syntax error for the event and read on). It also matches
// io.ErrUnexpectedEOF: the answer is incomplete. A line longer than
// 1 MiB is passed on unchecked.
var ErrMalformedEvent = fmt.Errorf("llmdrain: malformed event in stream: %w", io.ErrUnexpectedEOF)

// errorEvent starts the payload of a data line go-openai reads as an error.
var errorEvent = []byte(`{"error":`)

// cutData mirrors go-openai's `^data:\s*` on a trimmed line.
func cutData(trimmed []byte) ([]byte, bool) {
	rest, ok := bytes.CutPrefix(trimmed, []byte("data:"))
	for len(rest) > 0 && (rest[0] == ' ' || rest[0] == '\t' || rest[0] == '\n' || rest[0] == '\f' || rest[0] == '\r') {
		rest = rest[1:]
	}
	return rest, ok
}

// accumulated reports whether go-openai takes the line starting with head
// into its error accumulator: an error event, or any line but a data line.
func accumulated(head []byte) bool {
	payload, isData := cutData(bytes.TrimLeft(head, " \t\r\n\v\f"))
	return !isData || bytes.HasPrefix(payload, errorEvent)
}

// sseErrors follows what go-openai's stream reader accumulates into its
// error: the trimmed lines that are not data lines and the payloads of error
// events, all run together, over the whole stream. go-openai decodes that
// into an error when the stream ends or right after an error event; only a
// JSON object decodes. So the accumulation is kept, and its JSON depth
// followed, until it can never be an object; each time it becomes one, the
// key is looked for in its strings (escapes decoded), and if found the line
// that completed it is replaced: by the object re-encoded with the key
// scrubbed if the line holds all of it, else by nothing. Never, then, is the
// accumulation a JSON object with the key in it.
type sseErrors struct {
	b        []byte // the accumulation, while it may still be an object
	dead     bool   // it never will be
	started  bool   // its '{' is in
	depth    int
	inString bool
	escaped  bool
	closed   bool // its object is complete
}

// add takes c, the next content go-openai accumulates, and returns what to
// pass on in its place and whether that differs from c.
func (a *sseErrors) add(c, key []byte, isErr bool) ([]byte, bool) {
	changed := false
	if bytes.Contains(c, key) {
		c, changed = scrub(c, secret(key), false), true
	}
	if a.dead || len(c) == 0 {
		return c, changed
	}
	if len(a.b)+len(c) > maxErrorBody {
		// More than any error: rather than follow it further, the rest is
		// dropped, so it stays what it was, no object with the key in it.
		return nil, true
	}
	saved := *a
	a.scan(c)
	if a.dead {
		a.b = nil
		return c, changed
	}
	a.b = append(a.b, c...)
	if !a.closed || (bytes.IndexByte(a.b, '\\') < 0 && !bytes.Contains(a.b, key)) {
		return c, changed
	}
	// Complete, and the key may be in it: what go-openai would decode.
	dec := json.NewDecoder(bytes.NewReader(a.b))
	dec.UseNumber()
	var v any
	if !json.Valid(a.b) || dec.Decode(&v) != nil {
		*a = sseErrors{dead: true}
		return c, changed
	}
	v, found := scrubValue(v, string(key))
	if !found {
		return c, changed
	}
	obj, _ := v.(map[string]any)
	if enc, err := encodeObject(obj, isErr); err == nil && len(saved.b) == 0 {
		a.b = enc
		return enc, true
	}
	*a = saved
	return nil, true
}

// scan follows the JSON depth over c, as much as needed to tell where a
// top-level object ends.
func (a *sseErrors) scan(c []byte) {
	for _, ch := range c {
		switch {
		case a.closed || !a.started:
			if ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' {
				continue
			}
			if a.closed || ch != '{' {
				a.dead = true // something after the object, or no object
				return
			}
			a.started, a.depth = true, 1
		case a.inString:
			switch {
			case a.escaped:
				a.escaped = false
			case ch == '\\':
				a.escaped = true
			case ch == '"':
				a.inString = false
			}
		case ch == '"':
			a.inString = true
		case ch == '{' || ch == '[':
			a.depth++
		case ch == '}' || ch == ']':
			a.depth--
			a.closed = a.depth == 0
		}
	}
}

// encodeObject encodes obj, "error" first if errFirst, so that go-openai
// still reads it as an error event.
func encodeObject(obj map[string]any, errFirst bool) ([]byte, error) {
	if obj == nil {
		return nil, errors.New("not an object")
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if !errFirst {
		if err := enc.Encode(obj); err != nil {
			return nil, err
		}
		return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
	}
	out.WriteByte('{')
	keys := slices.Sorted(maps.Keys(obj))
	if i := slices.Index(keys, "error"); i > 0 {
		keys = append(append([]string{"error"}, keys[:i]...), keys[i+1:]...)
	}
	for i, k := range keys {
		if i > 0 {
			out.WriteByte(',')
		}
		if err := enc.Encode(k); err != nil {
			return nil, err
		}
		out.Truncate(out.Len() - 1)
		out.WriteByte(':')
		if err := enc.Encode(obj[k]); err != nil {
			return nil, err
		}
		out.Truncate(out.Len() - 1)
	}
	out.WriteByte('}')
	return out.Bytes(), nil
}

// maxUsageLine bounds the line a usageBody holds to look at it whole: a
// usage event, or a first chunk, is far below it. A longer line is passed
// on unread.
const maxUsageLine = 64 << 10

// usageBody is the body of a successful stream of a call with Hooks, under
// every other: it reads the model of the stream's first data event and
// the usage of its usage event (the last one to carry a "usage" object),
// and, with strip, takes out of the stream the usage event that llmdrain
// asked for on the caller's behalf (see includeUsage), as its empty
// choices could surprise a caller that did not ask for it. Every other
// line is passed on as it came, once whole.
type usageBody struct {
	rc    io.ReadCloser
	o     *callObs
	strip bool
	buf   []byte // buf[r:w] is read from rc and not passed on
	r, w  int
	clear int   // buf[r:clear] is judged, to pass on
	err   error // rc's, once buf is passed on
	model bool  // the model was looked for
}

func (u *usageBody) Read(p []byte) (int, error) {
	for {
		if u.r < u.clear {
			n := copy(p, u.buf[u.r:u.clear])
			u.r += n
			return n, nil
		}
		if i := bytes.IndexByte(u.buf[u.r:u.w], '\n'); i >= 0 {
			end := u.r + i + 1
			if u.look(u.buf[u.r:end]) {
				u.r = end // taken out
				continue
			}
			u.clear = end
			continue
		}
		switch {
		case u.w-u.r >= maxUsageLine, u.err != nil && u.r < u.w:
			u.clear = u.w // a line too long to hold, or the last one
			continue
		case u.err != nil:
			return 0, u.err
		}
		u.fill()
	}
}

func (u *usageBody) Close() error { return u.rc.Close() }

// fill reads more of rc into buf, making room first.
func (u *usageBody) fill() {
	if u.r > 0 {
		n := copy(u.buf, u.buf[u.r:u.w])
		u.clear -= u.r
		u.r, u.w = 0, n
	}
	if u.w == len(u.buf) {
		u.buf = append(u.buf, make([]byte, max(len(u.buf), 4<<10))...)
	}
	for range maxEmptyReads {
		n, err := u.rc.Read(u.buf[u.w:])
		u.w += n
		if err != nil {
			u.err = err
			return
		}
		if n > 0 {
			return
		}
	}
	u.err = io.ErrNoProgress
}

// look reads what it needs of a whole line, and reports whether the line
// is to be taken out of the stream.
func (u *usageBody) look(line []byte) bool {
	payload, isData := cutData(bytes.TrimSpace(line))
	if !isData || !objectShaped(payload) {
		return false
	}
	if !u.model {
		u.model = true
		m, ok := "", false
		if b, plain := plainString(payload, `"model":`); plain {
			m, ok = u.o.intern(b), true
		} else {
			m, ok = modelOf(payload)
		}
		if ok {
			u.o.mu.Lock()
			u.o.respModel = m
			u.o.mu.Unlock()
		}
	}
	if !bytes.Contains(payload, []byte(`"usage":{`)) && !bytes.Contains(payload, []byte(`"usage": {`)) {
		return false
	}
	var ev struct {
		Choices []json.RawMessage `json:"choices"`
		Usage   *usageJSON        `json:"usage"`
	}
	if json.Unmarshal(payload, &ev) != nil || ev.Usage == nil {
		return false
	}
	u.o.mu.Lock()
	u.o.usage = ev.Usage.usage()
	u.o.mu.Unlock()
	return u.strip && len(ev.Choices) == 0
}
