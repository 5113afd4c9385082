package llmdrain

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/internal/watchdog"
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

// sizedReader returns b in reads of at most size bytes.
type sizedReader struct {
	b    []byte
	size int
}

func (c *sizedReader) Read(p []byte) (int, error) {
	if len(c.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.size)], c.b)
	c.b = c.b[n:]
	return n, nil
}

func scrubSSE(t *testing.T, in string, size int) string {
	t.Helper()
	out, err := io.ReadAll(newSSEScrubber(io.NopCloser(&sizedReader{b: []byte(in), size: size}), fakeKey))
	require.NoError(t, err)
	return string(out)
}

// goOpenAIErrors models what go-openai's stream reader could make an error
// of, reading out: at each line, the accumulation of non-data lines and
// error events so far, decoded if it is JSON.
func goOpenAIErrors(out string) []string {
	var acc []byte
	var decoded []string
	for _, line := range strings.SplitAfter(out, "\n") {
		if !strings.HasSuffix(line, "\n") {
			break // go-openai drops an unterminated last line
		}
		payload, isData := cutData(bytes.TrimSpace([]byte(line)))
		if isData && !bytes.HasPrefix(payload, errorEvent) {
			continue
		}
		if !isData {
			payload = bytes.TrimSpace([]byte(line))
		}
		acc = append(acc, payload...)
		var v any
		if json.Unmarshal(acc, &v) == nil {
			decoded = append(decoded, fmt.Sprintf("%v", v))
		}
	}
	return decoded
}

// TestSSEScrubber feeds streams to the scrubber in every chunking: a normal
// stream passes unchanged; the key, raw or escaped, in an error event or
// spread over the lines go-openai accumulates, never reaches what go-openai
// could decode into an error.
func TestSSEScrubber(t *testing.T) {
	chunk := `data: {"id":"1","choices":[{"index":0,"delta":{"content":"a \u0041 \"q\""}}]}`
	for _, in := range []string{
		chunk + "\n\n" + chunk + "\r\n\r\n: ping\n\nevent: message\nid: 3\ndata: [DONE]\n\n",
		chunk + "\n\n{\"error\":{\"message\":\"not the key \\u0041\"}}\n",
		"data: {\"error\":{\"message\":\"escaped \\u0041\",\"code\":1}}\n\n",
		chunk + "\n\ndata: {\"x\":1}",
		"",
	} {
		for size := 1; size <= len(in)+1; size++ {
			require.Equal(t, in, scrubSSE(t, in, size), "chunks of %d", size)
		}
	}

	oneEscape := strings.Replace(fakeKey, "-", `\u002d`, 1)
	firstEscaped := `\u0073` + fakeKey[1:]
	event := func(k string) string {
		return `data: {"error":{"message":"bad key ` + k + `","code":"` + k + `","type":"x"}}` + "\n\n"
	}
	for name, in := range map[string]string{
		"event, raw":                  chunk + "\n\n" + event(fakeKey) + "data: [DONE]\n\n",
		"event, escaped":              event(escapedKey),
		"event, one escape":           event(oneEscape),
		"event, first escaped":        event(firstEscaped),
		"comment then event":          ": hi\n" + event(oneEscape),
		"line, raw":                   `{"error":{"message":"` + fakeKey + "\"}}\n",
		"line, escaped":               `{"error":{"message":"` + escapedKey + "\"}}\n",
		"lines, raw":                  `{"error":{"message":"` + fakeKey[:9] + "\n" + fakeKey[9:] + "\"}}\n",
		"lines, escape cut":           `{"error":{"message":"` + oneEscape[:4] + "\n" + oneEscape[4:] + "\"}}\n",
		"lines, then an event":        "{\n\"error\":\n" + event(oneEscape),
		"object keys":                 `{"error":{"` + escapedKey + `":1}}` + "\n",
		"data line, raw":              "data: {\"x\":\"" + fakeKey + "\"}\n",
		"unterminated":                "data: " + fakeKey,
		"lines, raw, then more lines": "{\n\"error\":{\"message\":\"" + fakeKey[:3] + "\n" + fakeKey[3:] + "\"}}\n\n\n" + `"}}` + "\n",
	} {
		whole := scrubSSE(t, in, len(in)+1)
		for size := 1; size <= len(in)+1; size++ {
			out := scrubSSE(t, in, size)
			// Messages without the texts: they could hold the key.
			require.True(t, whole == out, "%s: chunks of %d differ from one chunk", name, size)
			require.False(t, strings.Contains(out, fakeKey), "%s: chunks of %d: the key is passed on", name, size)
			for _, e := range goOpenAIErrors(out) {
				require.False(t, strings.Contains(e, fakeKey), "%s: chunks of %d: the key can reach an error", name, size)
			}
		}
		if strings.HasPrefix(name, "event") {
			errs := goOpenAIErrors(whole)
			require.NotEmpty(t, errs, name)
			assert.Contains(t, errs[len(errs)-1], "bad key [redacted]", "%s: the error is kept, the key scrubbed", name)
			assert.Regexp(t, `(?m)^data: \{"error":`, whole, "%s: still an error event", name)
		}
	}
}

// TestSSEScrubberLongLines has lines longer than the scrubber holds: a data
// line is passed on with the key scrubbed over the cuts, a line go-openai
// would take into an error is dropped.
func TestSSEScrubberLongLines(t *testing.T) {
	filler := strings.Repeat("x", maxSSELine+1000)
	for _, at := range []int{0, 4095, maxSSELine - 10, maxSSELine - 1, maxSSELine, maxSSELine + 500} {
		long := "data: " + filler[:at] + fakeKey + filler[at:]
		in := long + "\n\n" + `data: {"error":{"message":"` + fakeKey + "\"}}\n\n"
		want := strings.ReplaceAll(in, fakeKey, "[redacted]")
		for _, size := range []int{7, 4096, 1 << 16, len(in)} {
			out := scrubSSE(t, in, size)
			require.True(t, out == want, "key at %d, chunks of %d", at, size)
		}
		for _, acc := range []string{"{\"error\":" + long[6:], "data: {\"error\":{\"message\":\"" + long[6:]} {
			out := scrubSSE(t, acc+"\n"+chunk1+"\n", 1<<16)
			require.True(t, out == "\n"+chunk1+"\n", "key at %d", at)
		}
	}
}

const chunk1 = `data: {"id":"1"}`

// BenchmarkStreamBody reads a 1,000-event stream line by line, as go-openai
// does, through the body a 2xx chat stream gets: the scrubber under the
// tracked body and its [DONE] watcher.
func BenchmarkStreamBody(b *testing.B) {
	var stream bytes.Buffer
	for range 1000 {
		stream.WriteString(`data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"word "},"finish_reason":null}]}` + "\n\n")
	}
	stream.WriteString("data: [DONE]\n\n")
	b.SetBytes(int64(stream.Len()))
	br := bufio.NewReader(nil)
	tr := &transport{tracker: NewTracker()}
	for range b.N {
		rc := io.NopCloser(bytes.NewReader(stream.Bytes()))
		ctx, cancel, tk, err := tr.tracker.begin(context.Background(), "")
		if err != nil {
			b.Fatal(err)
		}
		c := &call{t: tr, ctx: ctx, cancel: cancel, tk: tk}
		// As a chat stream gets it: the idle watchdog kicked at each event.
		c.wd = watchdog.Start(watchdog.Real, time.Minute, func() bool { return true })
		tb := &trackedBody{c: c, rc: newSSEScrubber(rc, fakeKey), sse: &sseWatcher{mustEnd: true, wd: c.wd}}
		br.Reset(tb)
		for {
			if _, err := br.ReadSlice('\n'); err != nil {
				break
			}
		}
		c.wd.Stop()
	}
}
