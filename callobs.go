package llmdrain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	openai "github.com/sashabaranov/go-openai"
)

// callObs is what one call observes for its Hooks: when it began, what it
// asked for, and what came back. A call without Hooks has none (nil), and
// every use of it is behind that nil check, so calls without Hooks pay
// nothing for them.
//
// Its fields are written by the call's goroutine (RoundTrip), then, under
// mu, by the goroutine reading the response body, while another may close
// it, which tells CallDone.
type callObs struct {
	h     *Hooks
	start time.Time
	info  CallStartInfo

	mu sync.Mutex // guards what the body's readers write: usage, respModel, err

	target       string    // the current attempt's target
	attemptStart time.Time // the current attempt's start
	status       int       // the status handed over; 0: none
	err          error     // the call's error, nil until one is known
	ttft         time.Duration
	slotWait     time.Duration // the wait for a concurrency slot, not told yet; 0: none
	usage        Usage
	respModel    string
	// injected: the call asked for stream_options.include_usage on its
	// caller's behalf, and takes the usage event out of the stream.
	injected bool

	cost *costing // prices CallDoneInfo.Cost; its budget is settled at done
	free bool     // a GET, HEAD or DELETE: nothing is paid for its answer
	// reserved is what the call reserved in the client's budget, which
	// done settles when budgeted.
	reserved pico
	budgeted bool
}

// newCallObs starts the observation of req's call, or returns nil without
// Hooks.
func newCallObs(h *Hooks, req *http.Request, stream bool, target string) *callObs {
	if h == nil {
		return nil
	}
	return &callObs{h: h, start: time.Now(), info: CallStartInfo{
		Operation: operation(req.URL.Path),
		Stream:    stream,
		Target:    target,
	}}
}

// started tells CallStart.
func (o *callObs) started() {
	if o.h.CallStart != nil {
		o.h.CallStart(o.info)
	}
}

// refused tells h of a call refused with ErrDraining before it reached
// the transport: started and done at once, as the transport tells those it
// refuses.
func refused(h *Hooks, info CallStartInfo) {
	if h.CallStart != nil {
		h.CallStart(info)
	}
	if h.CallDone != nil {
		h.CallDone(CallDoneInfo{CallStartInfo: info, Err: ErrDraining, ErrorType: errorType(ErrDraining)})
	}
}

// fail records err as the call's error, if it has none yet.
func (o *callObs) fail(err error) {
	o.mu.Lock()
	if o.err == nil && err != nil {
		o.err = err
	}
	o.mu.Unlock()
}

// done settles the call's reservation in the client's budget, if it made
// one, and tells CallDone; the call's release calls it once.
func (o *callObs) done(attempts int) {
	if o.h.CallDone == nil && !o.budgeted {
		return
	}
	o.mu.Lock()
	err := o.err
	if err == nil && o.status >= 400 {
		err = &statusError{code: o.status}
	}
	info := CallDoneInfo{
		CallStartInfo:    o.info,
		ResponseModel:    o.respModel,
		Target:           o.target,
		Err:              err,
		ErrorType:        errorType(err),
		Duration:         time.Since(o.start),
		TimeToFirstChunk: o.ttft,
		Attempts:         attempts,
		Usage:            o.usage,
	}
	var spent pico
	info.Cost, spent = o.priced()
	o.mu.Unlock()
	if o.budgeted {
		o.cost.budget.Settle(int64(o.reserved), int64(spent))
	}
	if o.h.CallDone != nil {
		o.h.CallDone(info)
	}
}

// priced returns what the call's answer cost, and what the budget counts
// for it; o.mu is held. A call without a successful answer cost nothing
// (the API bills no error); a successful one costs its usage at its
// model's price, unknown when either is, and without usage the budget
// keeps its reservation: a stream cut before its usage event was paid for
// up to there, by how much nobody said.
func (o *callObs) priced() (Cost, pico) {
	if o.status/100 != 2 || o.free {
		return Cost{}, 0
	}
	cost, p := o.cost.of(o.respModel, o.info.Model, o.usage)
	if !o.usage.Known {
		return cost, o.reserved
	}
	return cost, p
}

// attempted tells AttemptDone of the attempt that ended with resp or err,
// judged o.
func (o *callObs) attempted(n int, resp *http.Response, err error, oc outcome, retry bool, reason string) {
	if o == nil || o.h.AttemptDone == nil {
		return
	}
	status := 0
	if resp != nil {
		status = resp.StatusCode
	}
	if reason == "" {
		reason = attemptReason(status, err)
	}
	o.h.AttemptDone(AttemptInfo{
		Target:   o.target,
		Attempt:  n,
		Status:   status,
		Outcome:  oc.String(),
		Err:      err,
		Duration: time.Since(o.attemptStart),
		Retry:    retry,
		Reason:   reason,
	})
}

// waitedSlot tells Waited of the wait for a concurrency slot, if there
// was one.
func (o *callObs) waitedSlot() {
	if o != nil && o.slotWait > 0 {
		o.waited(WaitConcurrency, "", o.slotWait)
		o.slotWait = 0
	}
}

// waited tells Waited of a wait that took d.
func (o *callObs) waited(why WaitReason, target string, d time.Duration) {
	if o.h.Waited != nil {
		o.h.Waited(WaitInfo{Reason: why, Target: target, Duration: d})
	}
}

// statusError is CallDoneInfo.Err for a call handed over with an error
// status: go-openai makes its *openai.APIError of the body, after the call.
type statusError struct{ code int }

func (e *statusError) Error() string {
	return fmt.Sprintf("llmdrain: answered with status %d %s", e.code, http.StatusText(e.code))
}

// operation names the kind of endpoint of path, as
// CallStartInfo.Operation does.
func operation(path string) string {
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		return OpChat
	case strings.HasSuffix(path, "/completions"):
		return OpTextCompletion
	case strings.HasSuffix(path, "/embeddings"):
		return OpEmbeddings
	}
	return OpOther
}

// attemptReason names why an attempt that ended with status or err failed,
// "" if it did not.
func attemptReason(status int, err error) string {
	switch {
	case err != nil:
		switch {
		case errors.Is(err, ErrForcedShutdown):
			return "forced_shutdown"
		case errors.Is(err, errFirstTokenTimeout):
			return "first_token_timeout"
		case errors.Is(err, context.Canceled):
			return "canceled"
		case errors.Is(err, context.DeadlineExceeded):
			return "timeout"
		case errors.Is(err, errNoFirstEvent):
			return "stream_cut"
		}
		return "connection"
	case status == http.StatusTooManyRequests:
		return "429"
	case status >= 500:
		return "5xx"
	case status >= 400:
		return "4xx"
	}
	return ""
}

// errorType names err for CallDoneInfo.ErrorType: a short word from a
// small set, fit for a metric's attribute.
func errorType(err error) string {
	if err == nil {
		return "" // before the targets of errors.As, which escape
	}
	return failureType(err)
}

func failureType(err error) string {
	var (
		se  *statusError
		ne  net.Error
		ote *net.OpError
	)
	switch {
	case errors.As(err, &se):
		return strconv.Itoa(se.code)
	case errors.Is(err, ErrDraining):
		return "draining"
	case errors.Is(err, ErrBudgetExceeded):
		return "budget_exceeded"
	case errors.Is(err, ErrRetryBudget):
		return "retry_budget"
	case errors.Is(err, ErrForcedShutdown):
		return "forced_shutdown"
	case errors.Is(err, ErrStreamStalled):
		return "stream_stalled"
	case errors.Is(err, ErrMalformedEvent):
		return "malformed_event"
	case errors.Is(err, ErrNotAStream):
		return "not_a_stream"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, errNoFirstEvent):
		return "stream_cut"
	case errors.As(err, &ote):
		return "connection"
	case errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	var ae *openai.APIError
	if errors.As(err, &ae) {
		if ae.HTTPStatusCode >= 400 {
			return strconv.Itoa(ae.HTTPStatusCode)
		}
		return "api_error" // an error in a successful answer
	}
	var re *RetryError
	if errors.As(err, &re) {
		return "connection" // a failure without a response: the link
	}
	return "other"
}

// Usage as the API spells it.
type usageJSON struct {
	PromptTokens        int `json:"prompt_tokens"`
	CompletionTokens    int `json:"completion_tokens"`
	PromptTokensDetails *struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"prompt_tokens_details"`
}

func (u *usageJSON) usage() Usage {
	us := Usage{InputTokens: u.PromptTokens, OutputTokens: u.CompletionTokens, Known: true}
	if u.PromptTokensDetails != nil {
		us.CachedInputTokens = u.PromptTokensDetails.CachedTokens
	}
	return us
}

// readAnswer takes the model and usage of a JSON answer read whole.
// Rather than decode the whole answer (go-openai does that next), it
// looks for the two keys: a key quoted in a string of the answer is
// escaped, \"model\", and is skipped. The common shapes are read without
// a decoder, which would cost some twenty allocations a call.
// It returns the usage, as answerUsage.
func (o *callObs) readAnswer(body []byte) (Usage, bool) {
	if m, ok := plainString(body, `"model":`); ok {
		o.respModel = o.intern(m)
	} else if m, ok := modelOf(body); ok {
		o.respModel = m
	}
	u, ok := answerUsage(body)
	if ok {
		o.usage = u
	}
	return u, ok
}

// answerUsage reads the usage of a JSON answer read whole, false if it
// has none. The usage comes last in OpenAI's answers: looked for from the
// end, without a decoder for the common shapes.
func answerUsage(body []byte) (Usage, bool) {
	if u, ok := quickUsage(body); ok {
		return u, true
	}
	if v := jsonValue(body, `"usage":`, true); len(v) > 0 && v[0] == '{' {
		var u usageJSON
		if json.Unmarshal(v, &u) == nil {
			return u.usage(), true
		}
	}
	return Usage{}, false
}

// intern returns b as a string, the requested model's when they are the
// same, as they often are, so that it costs no allocation.
func (o *callObs) intern(b []byte) string {
	if string(b) == o.info.Model {
		return o.info.Model
	}
	return string(b)
}

// keyAt returns the index just past the first (or, with last, the last)
// occurrence of key in b that is not escaped (in a string), -1 if none.
// The last is found searching forward: bytes.Index is vectorised, where
// bytes.LastIndex hashes every byte, and an answer has few occurrences.
func keyAt(b []byte, key string, last bool) int {
	k := []byte(key)
	found := -1
	for off := 0; ; {
		i := bytes.Index(b[off:], k)
		if i < 0 {
			break
		}
		i += off
		off = i + len(k)
		if i > 0 && b[i-1] == '\\' {
			continue
		}
		found = off
		if !last {
			break
		}
	}
	if found < 0 {
		return -1
	}
	return skipJSONSpace(b, found)
}

// plainString returns the value of key in b if it is a string without
// escapes.
func plainString(b []byte, key string) ([]byte, bool) {
	i := keyAt(b, key, false)
	if i < 0 || i >= len(b) || b[i] != '"' {
		return nil, false
	}
	v := b[i+1:]
	end := bytes.IndexByte(v, '"')
	if end < 0 || bytes.IndexByte(v[:end], '\\') >= 0 {
		return nil, false
	}
	return v[:end], true
}

// quickUsage reads the "usage" object of b if it is made of plain
// numbers and objects, as the API sends it; false otherwise (null, or
// anything it cannot read, left to a decoder).
func quickUsage(b []byte) (Usage, bool) {
	i := keyAt(b, `"usage":`, true)
	if i < 0 || i >= len(b) || b[i] != '{' {
		return Usage{}, false
	}
	depth, end := 0, -1
	for j := i; j < len(b) && end < 0; j++ {
		switch b[j] {
		case '{':
			depth++
		case '}':
			if depth--; depth == 0 {
				end = j
			}
		case '"', '[':
			// Keys are plain; a string value or an array is not the
			// usage this reads.
			if b[j] == '[' {
				return Usage{}, false
			}
			k := bytes.IndexByte(b[j+1:], '"')
			if k < 0 || bytes.IndexByte(b[j+1:j+1+k], '\\') >= 0 {
				return Usage{}, false
			}
			j += k + 1
		}
	}
	if end < 0 {
		return Usage{}, false
	}
	obj := b[i : end+1]
	in, ok1 := intAt(obj, `"prompt_tokens":`)
	out, ok2 := intAt(obj, `"completion_tokens":`)
	if !ok1 && !ok2 {
		return Usage{}, false
	}
	cached, _ := intAt(obj, `"cached_tokens":`)
	return Usage{InputTokens: in, CachedInputTokens: cached, OutputTokens: out, Known: true}, true
}

// intAt returns the non-negative integer value of key in obj.
func intAt(obj []byte, key string) (int, bool) {
	i := keyAt(obj, key, false)
	if i < 0 {
		return 0, false
	}
	n, digits := 0, 0
	for ; i < len(obj) && obj[i] >= '0' && obj[i] <= '9' && digits < 15; i, digits = i+1, digits+1 {
		n = n*10 + int(obj[i]-'0')
	}
	return n, digits > 0
}

// modelOf returns the string value of the first unescaped "model" key of
// a JSON document.
func modelOf(b []byte) (string, bool) {
	var m string
	v := jsonValue(b, `"model":`, false)
	return m, v != nil && json.Unmarshal(v, &m) == nil
}

// jsonValue returns the JSON value that follows the first (or, with last,
// the last) unescaped occurrence of key in b, nil if there is none or it
// does not decode.
func jsonValue(b []byte, key string, last bool) json.RawMessage {
	i := keyAt(b, key, last)
	if i < 0 {
		return nil
	}
	var v json.RawMessage
	if json.NewDecoder(bytes.NewReader(b[i:])).Decode(&v) != nil {
		return nil
	}
	return v
}

// requestModel returns the model a JSON request body names, "" if none;
// def, the configured model, when it is that one, so that it costs no
// allocation.
func requestModel(body []byte, def string) string {
	if m, ok := plainString(body, `"model":`); ok {
		if string(m) == def {
			return def
		}
		return string(m)
	}
	m, _ := modelOf(body)
	return m
}

// includeUsage returns body, a streaming chat completion request, asking
// for the usage event (stream_options.include_usage), or nil if it needs
// no change: it says something of stream_options already (the caller's
// choice stands), or is no JSON object.
func includeUsage(body []byte) []byte {
	if bytes.Contains(body, []byte(`"stream_options"`)) {
		return nil
	}
	end := bytes.LastIndexByte(body, '}')
	if end < 0 || !json.Valid(body) {
		return nil
	}
	head := bytes.TrimRight(body[:end], " \t\r\n")
	sep := ","
	if len(head) > 0 && head[len(head)-1] == '{' {
		sep = ""
	}
	out := make([]byte, 0, len(body)+40)
	out = append(out, head...)
	out = append(out, sep+`"stream_options":{"include_usage":true}`...)
	return append(out, body[end:]...)
}
