package llmtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
	"unicode"

	openai "github.com/sashabaranov/go-openai"
)

// Reply returns the assistant text the server answers for prompt, the
// content of the last user message: "You said: " followed by prompt.
// Streamed responses deliver the same text split after each word.
func Reply(prompt string) string { return "You said: " + prompt }

type chatResponse struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   usage        `json:"usage"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     *logprobs   `json:"logprobs"`
	FinishReason string      `json:"finish_reason"`
}

type chatMessage struct {
	Role      string     `json:"role"`
	Content   *string    `json:"content"` // null when the answer is a tool call
	ToolCalls []toolCall `json:"tool_calls,omitempty"`
}

type toolCall struct {
	Index    *int         `json:"index,omitempty"` // in a stream's delta
	ID       string       `json:"id"`
	Type     string       `json:"type"`
	Function toolFunction `json:"function"`
}

type toolFunction struct {
	Name      string `json:"name"`
	Arguments string `json:"arguments"`
}

type logprobs struct {
	Content []tokenLogprob `json:"content"`
}

type tokenLogprob struct {
	Token       string       `json:"token"`
	Logprob     float64      `json:"logprob"`
	Bytes       []int        `json:"bytes"`
	TopLogprobs []topLogprob `json:"top_logprobs"`
}

type topLogprob struct {
	Token   string  `json:"token"`
	Logprob float64 `json:"logprob"`
	Bytes   []int   `json:"bytes"`
}

type chatChunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"`
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []chunkChoice `json:"choices"`
	// Usage is absent unless the request asked for it; then null on every
	// chunk but the last, as the API sends it.
	Usage json.RawMessage `json:"usage,omitempty"`
}

type chunkChoice struct {
	Index        int        `json:"index"`
	Delta        chunkDelta `json:"delta"`
	Logprobs     *logprobs  `json:"logprobs"`
	FinishReason *string    `json:"finish_reason"`
}

type chunkDelta struct {
	Role      string     `json:"role,omitempty"`
	Content   string     `json:"content,omitempty"`
	ToolCalls []toolCall `json:"tool_calls,omitempty"`
}

// chatCall is one decoded chat request with the answer prepared for it.
type chatCall struct {
	id      string
	created int64
	model   string
	prompt  string // the last user message: the key of Completed
	reply   string
	finish  string // "stop", or "length" when max_tokens cut the reply
	usage   usage

	n           int    // choices, each with the same reply
	logprobs    bool   // with each token's log probability
	topLogprobs int    // and this many alternatives
	tool        string // a forced tool call's function name; "" for none
}

// toolName is the function a request forces a call of, by name or by
// "required" (its first tool's); "" when none is forced.
func toolName(req openai.ChatCompletionRequest) string {
	switch c := req.ToolChoice.(type) {
	case string:
		if c == "required" && len(req.Tools) > 0 && req.Tools[0].Function != nil {
			return req.Tools[0].Function.Name
		}
	case map[string]any:
		if f, ok := c["function"].(map[string]any); ok {
			name, _ := f["name"].(string)
			return name
		}
	}
	return ""
}

// tokenLogprobs are the log probabilities of a word and its alternatives:
// made up, but of the API's shape, and the same every time.
func (c chatCall) tokenLogprobs(word string) *logprobs {
	if !c.logprobs {
		return nil
	}
	lp := tokenLogprob{Token: word, Logprob: -0.0001, Bytes: bytesOf(word), TopLogprobs: []topLogprob{}}
	for i := range c.topLogprobs {
		alt := word
		if i > 0 {
			alt = fmt.Sprintf("alt%d", i)
		}
		lp.TopLogprobs = append(lp.TopLogprobs, topLogprob{Token: alt, Logprob: -0.0001 - float64(i)*2, Bytes: bytesOf(alt)})
	}
	return &logprobs{Content: []tokenLogprob{lp}}
}

func bytesOf(s string) []int {
	b := make([]int, len(s))
	for i := range len(s) {
		b[i] = int(s[i])
	}
	return b
}

func (s *Server) serveChat(w http.ResponseWriter, r *http.Request) {
	s.chatStarted()
	// done takes the request out of InFlight. Every path calls it just
	// before the client can see the outcome (the last bytes written, the
	// connection closed), so a client never finds its finished request
	// still in flight: a test of a client-side concurrency limit can trust
	// MaxInFlight. The deferred call covers requests the client abandoned.
	inFlight := true
	done := func() {
		if inFlight {
			inFlight = false
			s.chatEnded()
		}
	}
	defer done()

	// Reading the body to the end matters beyond decoding: only then does
	// net/http watch the connection and cancel r.Context() when the client
	// goes away, which is what ends a Hang.
	body, readErr := readBody(w, r)
	if readErr != nil && !tooLarge(readErr) {
		return // the client went away mid-request: nobody to answer
	}
	if d := deployment(r); d != "" && readErr == nil {
		body = withModel(body, d) // Azure: the deployment is the model
	}
	// Rejections are faults of the server's own making; they do not consume
	// the script.
	var req openai.ChatCompletionRequest
	var f Fault
	if readErr != nil {
		s.countFault()
		f = errorFault(http.StatusRequestEntityTooLarge, "Request body too large.")
	} else if !s.authorized(r) {
		s.countFault()
		f = authFault(r)
	} else if err := json.Unmarshal(body, &req); err != nil {
		s.countFault()
		f = errorFault(http.StatusBadRequest, "We could not parse the JSON body of your request: "+err.Error())
	} else if bad, ok := s.validateChat(body); !ok {
		s.countFault()
		f = bad
	} else if f = s.gate(w, req); f.kind == kindOK {
		f = s.nextFault(lastUserMessage(req), req.Stream)
	}

	ctx := r.Context()
	if f.kind == kindHang {
		<-ctx.Done()
		done()
		abort(w, false)
		return
	}
	var delay time.Duration // before the response; FirstTokenDelay's comes later
	if f.kind == kindDelay {
		delay = f.delay
	}
	if !f.immediate && !s.wait(ctx, delay) {
		done()
		abort(w, false)
		return
	}
	switch f.kind {
	case kindReset:
		done()
		abort(w, true)
		return
	case kindStatus:
		done()
		respondFault(w, f)
		return
	}

	call := s.newChatCall(req)
	if req.Stream {
		includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		s.streamChat(w, r, call, f, includeUsage, done)
		return
	}
	s.plainChat(w, r, call, f, done)
}

func (s *Server) newChatCall(req openai.ChatCompletionRequest) chatCall {
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	s.mu.Unlock()

	promptWords := 0
	for _, m := range req.Messages {
		promptWords += len(strings.Fields(messageText(m)))
	}
	prompt := lastUserMessage(req)
	reply, finish := Reply(prompt), string(openai.FinishReasonStop)
	if rf := req.ResponseFormat; rf != nil && (rf.Type == openai.ChatCompletionResponseFormatTypeJSONObject || rf.Type == openai.ChatCompletionResponseFormatTypeJSONSchema) {
		reply = string(mustJSON(map[string]string{"reply": reply}))
	}
	// A word is a token here; max_completion_tokens wins over the older
	// max_tokens, as with the real API.
	//lint:ignore SA1019 clients still send max_tokens, and the API honours it
	limit := req.MaxTokens
	if req.MaxCompletionTokens > 0 {
		limit = req.MaxCompletionTokens
	}
	if limit > 0 {
		rest := reply
		for range limit {
			_, rest = nextWord(rest)
		}
		if rest != "" {
			reply, finish = reply[:len(reply)-len(rest)], string(openai.FinishReasonLength)
		}
	}
	call := chatCall{
		id:          fmt.Sprintf("chatcmpl-%d", id),
		created:     time.Now().Unix(),
		model:       req.Model,
		prompt:      prompt,
		reply:       reply,
		finish:      finish,
		n:           max(req.N, 1),
		logprobs:    req.LogProbs,
		topLogprobs: req.TopLogProbs,
		tool:        toolName(req),
	}
	if call.tool != "" {
		call.reply, call.finish = "", string(openai.FinishReasonToolCalls)
	}
	call.usage = newUsage(promptWords, call.n*len(strings.Fields(call.reply)))
	return call
}

// lastUserMessage is the text of req's last user message, the prompt that
// Completed and History are keyed by.
func lastUserMessage(req openai.ChatCompletionRequest) string {
	for i := len(req.Messages) - 1; i >= 0; i-- {
		if m := req.Messages[i]; m.Role == openai.ChatMessageRoleUser {
			return messageText(m)
		}
	}
	return ""
}

// messageText is a message's content; for multi-part content, its text parts
// joined by newlines.
func messageText(m openai.ChatCompletionMessage) string {
	if len(m.MultiContent) == 0 {
		return m.Content
	}
	var parts []string
	for _, p := range m.MultiContent {
		if p.Type == openai.ChatMessagePartTypeText {
			parts = append(parts, p.Text)
		}
	}
	return strings.Join(parts, "\n")
}

// plainChat writes a non-streamed answer; done is serveChat's.
func (s *Server) plainChat(w http.ResponseWriter, r *http.Request, call chatCall, f Fault, done func()) {
	body := mustJSON(chatResponse{
		ID:      call.id,
		Object:  "chat.completion",
		Created: call.created,
		Model:   call.model,
		Choices: call.choices(),
		Usage:   call.usage,
	})
	switch f.kind {
	case kindMalformed:
		// A complete response, by its Content-Length, that is no JSON.
		done()
		writeBody(w, http.StatusOK, "application/json", body[:len(body)/2], f.header)
		return
	case kindFirstTokenDelay:
		if !sleep(r.Context(), f.delay) {
			done()
			abort(w, false)
			return
		}
	case kindTruncate, kindStall:
		// Promise the whole body, deliver half: the client's read must fail
		// with an unexpected EOF (or wait, for a stall) rather than see a
		// short but valid response.
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", fmt.Sprint(len(body)))
		overrideHeaders(h, f.header)
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(body[:len(body)/2])
		_ = http.NewResponseController(w).Flush()
		if f.kind == kindStall {
			<-r.Context().Done()
		}
		done()
		abort(w, false)
		return
	}
	// Counted before writing so that a client holding the response can
	// rely on Completed; see there.
	undo := s.countSuccess(call.prompt, call.usage)
	done()
	if !writeBody(w, http.StatusOK, "application/json", body, f.header) {
		undo()
	}
}

// choices are a plain answer's: n the same.
func (c chatCall) choices() []chatChoice {
	out := make([]chatChoice, c.n)
	for i := range out {
		msg := chatMessage{Role: openai.ChatMessageRoleAssistant}
		if c.tool != "" {
			msg.ToolCalls = []toolCall{c.toolCall(nil)}
		} else {
			msg.Content = &c.reply
		}
		var lp *logprobs
		if c.logprobs {
			lp = &logprobs{Content: []tokenLogprob{}}
			for rest := c.reply; rest != ""; {
				var word string
				word, rest = nextWord(rest)
				lp.Content = append(lp.Content, c.tokenLogprobs(word).Content...)
			}
		}
		out[i] = chatChoice{Index: i, Message: msg, Logprobs: lp, FinishReason: c.finish}
	}
	return out
}

// toolCall is the forced call of c.tool, with empty arguments.
func (c chatCall) toolCall(index *int) toolCall {
	return toolCall{Index: index, ID: "call_" + strings.TrimPrefix(c.id, "chatcmpl-"), Type: "function",
		Function: toolFunction{Name: c.tool, Arguments: "{}"}}
}

// streamChat writes a streamed answer; done is serveChat's. Each event is
// made as it is sent, so a long answer costs no more memory than a short
// one.
func (s *Server) streamChat(w http.ResponseWriter, r *http.Request, call chatCall, f Fault, includeUsage bool, done func()) {
	var nullUsage json.RawMessage
	if includeUsage {
		nullUsage = json.RawMessage("null")
	}
	// Each chunk carries every choice: n > 1 answers side by side.
	chunk := func(d chunkDelta, lp *logprobs, finish *string) []byte {
		choices := make([]chunkChoice, call.n)
		for i := range choices {
			choices[i] = chunkChoice{Index: i, Delta: d, Logprobs: lp, FinishReason: finish}
		}
		return mustJSON(chatChunk{
			ID: call.id, Object: "chat.completion.chunk", Created: call.created, Model: call.model,
			Choices: choices, Usage: nullUsage,
		})
	}
	// The events: the role chunk, a chunk per word, the finish chunk, the
	// usage chunk if asked for, then [DONE].
	words := countWords(call.reply)
	if call.tool != "" {
		words = 1 // the tool call, in one delta
	}
	total := 1 + words + 1
	if includeUsage {
		total++
	}
	if f.kind != kindNoDone {
		total++
	}
	malformed := -1
	switch f.kind {
	case kindTruncate, kindStall:
		n := f.chunks
		if n == truncateHalf {
			n = words / 2
		}
		total = 1 + min(n, words)
	case kindMalformed:
		// Content events are 1 to words; a reply has at least one.
		malformed = min(max(f.chunks, 1), max(words, 1))
	}
	rest := call.reply // the words not yet sent
	event := func(i int) []byte {
		var ev []byte
		switch {
		case i == 0:
			ev = chunk(chunkDelta{Role: openai.ChatMessageRoleAssistant}, nil, nil)
		case i <= words && call.tool != "":
			zero := 0
			ev = chunk(chunkDelta{ToolCalls: []toolCall{call.toolCall(&zero)}}, nil, nil)
		case i <= words:
			var word string
			word, rest = nextWord(rest)
			ev = chunk(chunkDelta{Content: word}, call.tokenLogprobs(word), nil)
		case i == words+1:
			ev = chunk(chunkDelta{}, nil, &call.finish)
		case i == words+2 && includeUsage:
			ev = mustJSON(chatChunk{
				ID: call.id, Object: "chat.completion.chunk", Created: call.created, Model: call.model,
				Choices: []chunkChoice{}, Usage: mustJSON(call.usage),
			})
		default:
			ev = []byte("[DONE]")
		}
		if i == malformed {
			ev = []byte(`{"id":"` + call.id + `","object":"chat.completion.chunk","choices":[{"delta":{"content":`)
		}
		return ev
	}
	succeeds := f.succeeds()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	overrideHeaders(h, f.header)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	ctx := r.Context()
	undo := func() {}
	if f.kind == kindFirstTokenDelay {
		// The headers go out at once; the first event only after the delay.
		if rc.Flush() != nil || !sleep(ctx, f.delay) {
			done()
			abort(w, false)
			return
		}
	}
	for i := range total {
		if i > 0 && !sleep(ctx, s.chunkDelay) {
			done()
			abort(w, false)
			return
		}
		if i == total-1 && succeeds {
			// Counted before [DONE] goes out so that a client that has
			// read it can rely on Completed; see there.
			undo = s.countSuccess(call.prompt, call.usage)
			done()
		}
		// Flush each event on its own: clients must be able to observe a
		// stream that stops half-way.
		if _, err := fmt.Fprintf(w, "data: %s\n\n", event(i)); err != nil {
			undo()
			return
		}
		if err := rc.Flush(); err != nil {
			undo()
			return
		}
	}
	switch f.kind {
	case kindTruncate:
		done()
		abort(w, false)
	case kindStall:
		s.stall(ctx, w, f.keepAlive)
		done()
		abort(w, false)
	case kindMalformed:
		done()
	}
}

// stall holds a stream open, silent but for a keep-alive comment every
// keepAlive (none if 0), until ctx ends.
func (s *Server) stall(ctx context.Context, w http.ResponseWriter, keepAlive time.Duration) {
	if keepAlive <= 0 {
		<-ctx.Done()
		return
	}
	rc := http.NewResponseController(w)
	for sleep(ctx, keepAlive) {
		if _, err := io.WriteString(w, ": keep-alive\n\n"); err != nil || rc.Flush() != nil {
			return
		}
	}
}

// nextWord returns the first word of text with the white space after it,
// and the rest: text cut after its first run of white space, so the words
// of a text concatenate back to it.
func nextWord(text string) (word, rest string) {
	inSpace := false
	for i, r := range text {
		if unicode.IsSpace(r) {
			inSpace = true
			continue
		}
		if inSpace {
			return text[:i], text[i:]
		}
	}
	return text, ""
}

// countWords is how many words nextWord cuts text into.
func countWords(text string) int {
	n := 0
	for text != "" {
		_, text = nextWord(text)
		n++
	}
	return n
}

// withModel returns body, a JSON object, with its model set to model; body
// as it is if it is no JSON object.
func withModel(body []byte, model string) []byte {
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil || fields == nil {
		return body
	}
	fields["model"] = mustJSON(model)
	return mustJSON(fields)
}
