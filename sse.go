package llmdrain

import "bytes"

// maxDoneLine bounds the bytes kept of one line. A "data: [DONE]" line is 12
// bytes; one padded with more surrounding space than this is not recognised
// and its stream is reported truncated, the safe direction.
const maxDoneLine = 256

// sseWatcher watches the bytes of a server-sent-event stream go by, over
// arbitrary chunk boundaries, and records whether a "data: [DONE]" line has
// been seen. It matches the line exactly as go-openai's stream reader does:
// lines end at '\n', surrounding space is trimmed, then "data:", optional
// space, and "[DONE]".
type sseWatcher struct {
	line     []byte // start of the current line, at most maxDoneLine bytes
	overflow bool   // the current line is too long to be [DONE]
	done     bool
}

func (w *sseWatcher) Write(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.keep(p)
			return
		}
		w.keep(p[:i])
		if !w.overflow && isDoneLine(w.line) {
			w.done = true
		}
		w.line, w.overflow = w.line[:0], false
		p = p[i+1:]
	}
}

func (w *sseWatcher) keep(p []byte) {
	if w.overflow {
		return
	}
	if len(w.line)+len(p) > maxDoneLine {
		w.overflow = true
		return
	}
	w.line = append(w.line, p...)
}

// isDoneLine mirrors go-openai: bytes.TrimSpace, then the regexp `^data:\s*`
// removed, then a comparison with "[DONE]". RE2's \s is [\t\n\f\r ].
func isDoneLine(line []byte) bool {
	rest, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("data:"))
	return ok && bytes.Equal(bytes.TrimLeft(rest, "\t\n\f\r "), []byte("[DONE]"))
}
