package llmdrain

import (
	"bytes"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestSSEWatcher(t *testing.T) {
	cases := map[string]bool{
		"data: {\"x\":1}\n\ndata: [DONE]\n\n": true,
		"data: [DONE]\n":                      true,
		"data:[DONE]\r\n":                     true,
		"  data:   [DONE]  \n":                true,
		"data: {\"x\":1}\n\n":                 false,
		"data: [DONE]":                        false, // go-openai drops an unterminated last line
		"data: [DONE] x\n":                    false,
		"event: done\n":                       false,
		"data: [DO":                           false,
		"":                                    false,
		"data: " + strings.Repeat("x", 1000) + "\ndata: [DONE]\n": true,
	}
	for in, want := range cases {
		for size := 1; size <= len(in)+1; size++ { // every chunking
			var w sseWatcher
			for s := in; len(s) > 0; {
				n := min(size, len(s))
				w.Write([]byte(s[:n]))
				s = s[n:]
			}
			if w.done != want {
				t.Fatalf("%q in chunks of %d: done=%v, want %v", in, size, w.done, want)
			}
		}
	}
}

// goOpenAIDone is go-openai's own test for the end of a stream: its
// streamReader reads '\n'-terminated lines, trims them and strips the
// `^data:\s*` header.
func goOpenAIDone(stream []byte) bool {
	header := regexp.MustCompile(`^data:\s*`)
	for {
		i := bytes.IndexByte(stream, '\n')
		if i < 0 {
			return false
		}
		line := bytes.TrimSpace(stream[:i])
		stream = stream[i+1:]
		if header.Match(line) && string(header.ReplaceAll(line, nil)) == "[DONE]" {
			return true
		}
	}
}

func FuzzSSEWatcher(f *testing.F) {
	f.Add([]byte("data: {}\n\ndata: [DONE]\n\n"), uint8(3))
	f.Add([]byte("data: {}\n\n"), uint8(1))
	f.Add([]byte("data:\t[DONE]\r\n"), uint8(7))
	f.Add([]byte(" data: [DONE]"), uint8(2))
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		if len(stream) > maxDoneLine {
			t.Skip("lines longer than maxDoneLine are documented not to count")
		}
		size := int(chunk)%16 + 1
		var w sseWatcher
		for s := stream; len(s) > 0; {
			n := min(size, len(s))
			w.Write(s[:n])
			s = s[n:]
		}
		if want := goOpenAIDone(stream); w.done != want {
			t.Fatalf("%q in chunks of %d: done=%v, go-openai says %v", stream, size, w.done, want)
		}
	})
}

func TestSSEWatcherBoundedMemory(t *testing.T) {
	var w sseWatcher
	w.Write(bytes.Repeat([]byte("x"), 1<<20))
	assert.LessOrEqual(t, cap(w.line), 2*maxDoneLine)
	w.Write([]byte("\ndata: [DONE]\n"))
	assert.True(t, w.done)
}
