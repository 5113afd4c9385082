// Package batchfile reads and writes the files of the OpenAI Batch API, so
// that prompts already kept as Batch input run through llmdrain, and its
// results are read by the same code as OpenAI's.
//
// An input file is JSON Lines, one request a line:
//
//	{"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o", "messages": [...]}}
//
// Chat completions (/v1/chat/completions) and embeddings (/v1/embeddings)
// are accepted; every other URL is refused, naming the line. custom_id is
// the task's ID (llmdrain.Task.ID): it keys the journal, the shard and the
// result, so inserting or reordering lines changes nothing for the others.
//
// An output file is JSON Lines too, one result a line, in the order the
// tasks ended (as OpenAI's, which is not input order either; Merge puts
// them in input order):
//
//	{"id": "batch_req_...", "custom_id": "request-1", "response": {"status_code": 200, "request_id": "...", "body": {...}}, "error": null}
//
// as OpenAI writes them: an answer of the API, an error status included,
// is a response with its status code and body ({"error": {...}} for an
// error), and "error" is null; a request that got no answer at all (the
// connection failed, retries included) has a null response and an "error"
// object with a code and a message. See ResultOf.
package batchfile

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"strings"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
)

// The request URLs an input line may name.
const (
	URLChatCompletions = "/v1/chat/completions"
	URLEmbeddings      = "/v1/embeddings"
)

// MaxLineBytes bounds one input or output line: a request body, an answer.
const MaxLineBytes = 16 << 20

// ErrInvalid matches every error about a bad input line.
var ErrInvalid = errors.New("batchfile: invalid input")

// Request is one line of an input file.
type Request struct {
	CustomID string          `json:"custom_id"`
	Method   string          `json:"method"`
	URL      string          `json:"url"`
	Body     json.RawMessage `json:"body"`
}

// LineError is a bad input line: its number (from 1), its custom_id when
// it has one, and what is wrong. It matches ErrInvalid.
type LineError struct {
	Line     int
	CustomID string
	Err      error
}

func (e *LineError) Error() string {
	if e.CustomID != "" {
		return fmt.Sprintf("line %d (custom_id %q): %v", e.Line, e.CustomID, e.Err)
	}
	return fmt.Sprintf("line %d: %v", e.Line, e.Err)
}

// Unwrap returns ErrInvalid and the cause.
func (e *LineError) Unwrap() []error { return []error{ErrInvalid, e.Err} }

// Task checks the request and returns it as a task: a chat completion or
// an embeddings call, with the custom_id as its ID. The body is decoded
// strictly: a field the client does not know would be dropped without a
// word, so it is refused instead. A chat body may leave "model" empty (the
// client's model is then used); an embeddings body must name one.
func (r Request) Task() (llmdrain.Task, error) {
	switch {
	case r.CustomID == "":
		return llmdrain.Task{}, errors.New(`no "custom_id"`)
	case r.Method != "POST":
		return llmdrain.Task{}, fmt.Errorf(`method %q: want "POST"`, r.Method)
	case len(bytes.TrimSpace(r.Body)) == 0 || bytes.TrimSpace(r.Body)[0] != '{':
		return llmdrain.Task{}, errors.New(`"body" is not a JSON object`)
	}
	switch r.URL {
	case URLChatCompletions:
		var req openai.ChatCompletionRequest
		if err := strictDecode(r.Body, &req); err != nil {
			return llmdrain.Task{}, fmt.Errorf("body is not a chat completion request: %w", err)
		}
		if len(req.Messages) == 0 {
			return llmdrain.Task{}, errors.New(`body has no "messages"`)
		}
		if req.Stream {
			return llmdrain.Task{}, errors.New(`body asks for "stream": a batch takes whole answers`)
		}
		return llmdrain.Task{ID: r.CustomID, Request: &req}, nil
	case URLEmbeddings:
		var req openai.EmbeddingRequest
		if err := strictDecode(r.Body, &req); err != nil {
			return llmdrain.Task{}, fmt.Errorf("body is not an embeddings request: %w", err)
		}
		if req.Model == "" {
			return llmdrain.Task{}, errors.New(`embeddings body has no "model"`)
		}
		if req.Input == nil {
			return llmdrain.Task{}, errors.New(`embeddings body has no "input"`)
		}
		return llmdrain.Task{ID: r.CustomID, Embeddings: &req}, nil
	}
	return llmdrain.Task{}, fmt.Errorf("url %q is not supported: want %s or %s", r.URL, URLChatCompletions, URLEmbeddings)
}

func strictDecode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the object")
	}
	return nil
}

// lines yields the lines of r with their numbers, from 1, skipping blank
// ones; a line longer than MaxLineBytes is an error.
func lines(r io.Reader) iter.Seq2[int, []byte] {
	return func(yield func(int, []byte) bool) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), MaxLineBytes)
		n := 0
		for sc.Scan() {
			n++
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 {
				continue
			}
			if !yield(n, line) {
				return
			}
		}
		if err := sc.Err(); err != nil {
			yield(n+1, nil) // nil: the read failed there
		}
	}
}

// parseLine decodes one input line.
func parseLine(n int, line []byte) (Request, error) {
	if line == nil {
		return Request{}, &LineError{Line: n, Err: fmt.Errorf("unreadable (longer than %d bytes?)", MaxLineBytes)}
	}
	var req Request
	if err := strictDecode(line, &req); err != nil {
		return Request{}, &LineError{Line: n, Err: fmt.Errorf("not a batch request line: %w", err)}
	}
	return req, nil
}

// Tasks reads an input file as tasks, one a line, for
// llmdrain.Client.BatchSeq. A bad line is yielded as a *LineError, and
// ends the sequence. Tasks does not look for duplicate custom_ids (BatchSeq
// does, and Check does before anything runs).
func Tasks(r io.Reader) iter.Seq2[llmdrain.Task, error] {
	return func(yield func(llmdrain.Task, error) bool) {
		for n, line := range lines(r) {
			req, err := parseLine(n, line)
			if err != nil {
				yield(llmdrain.Task{}, err)
				return
			}
			t, err := req.Task()
			if err != nil {
				yield(llmdrain.Task{}, &LineError{Line: n, CustomID: req.CustomID, Err: err})
				return
			}
			if !yield(t, nil) {
				return
			}
		}
	}
}

// Summary counts an input file's tasks.
type Summary struct {
	Tasks int // valid request lines
	Owned int // of them, those the shard owns
}

// maxReported bounds the line errors Check returns.
const maxReported = 20

// Check reads a whole input file and reports every bad line (the first 20
// of them, and how many more), each a *LineError: a torn or non-JSON line,
// a missing or duplicate custom_id, an unsupported URL or method, a body
// that is not a request. Run it before the batch, so that nothing is paid
// for when the file is bad. It keeps 16 bytes per line, for the duplicate
// check, and counts the tasks the shard owns.
func Check(r io.Reader, shard llmdrain.Shard) (Summary, error) {
	var sum Summary
	var errs []error
	bad := 0
	seen := make(map[[16]byte]int32)
	report := func(err error) {
		bad++
		if bad <= maxReported {
			errs = append(errs, err)
		}
	}
	for n, line := range lines(r) {
		req, err := parseLine(n, line)
		if err != nil {
			report(err)
			continue
		}
		if _, err := req.Task(); err != nil {
			report(&LineError{Line: n, CustomID: req.CustomID, Err: err})
			continue
		}
		k := key(req.CustomID)
		if first, dup := seen[k]; dup {
			report(&LineError{Line: n, CustomID: req.CustomID, Err: fmt.Errorf("duplicate custom_id, first on line %d", first)})
			continue
		}
		seen[k] = int32(n)
		sum.Tasks++
		if shard.Owns(req.CustomID) {
			sum.Owned++
		}
	}
	if bad > maxReported {
		errs = append(errs, fmt.Errorf("%w: and %d more bad lines", ErrInvalid, bad-maxReported))
	}
	return sum, errors.Join(errs...)
}

func key(id string) [16]byte {
	sum := sha256.Sum256([]byte(id))
	return [16]byte(sum[:16])
}

// Result is one line of an output file, as OpenAI's Batch API writes it.
type Result struct {
	ID       string    `json:"id"`
	CustomID string    `json:"custom_id"`
	Response *Response `json:"response"`
	Error    *Error    `json:"error"`
}

// failed reports whether the result is a failure.
func (r Result) failed() bool {
	return r.Error != nil || r.Response == nil || r.Response.StatusCode != 200
}

// Response is the API's answer to a request.
type Response struct {
	StatusCode int             `json:"status_code"`
	RequestID  string          `json:"request_id"`
	Body       json.RawMessage `json:"body"`
}

// Error says why a request got no answer.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes of results without a response.
const (
	// CodeRequestFailed: no answer came, retries included (connection
	// refused or reset, timeouts).
	CodeRequestFailed = "request_failed"
)

// ResultOf turns a task's result into an output line; ok is false for a
// task that did not run (nor was resumed), which has no line: a resumed
// batch runs it. A completed task is a 200 response with the answer's
// body, as go-openai decoded it (fields it does not know are not kept). A
// task that failed with an error status is a response with that status
// and the error as {"error": {"message", "type", "param", "code"}}; a 2xx
// answer without choices is a 200 response with its body. Any other
// failure is an Error with CodeRequestFailed and the error's text (which
// never holds the API key). The line's id is "batch_req_" and a hash of
// the custom_id: the same in every run.
func ResultOf(r llmdrain.TaskResult) (res Result, ok bool) {
	res = Result{ID: ResultID(r.ID), CustomID: r.ID}
	switch {
	case r.Status == llmdrain.StatusCompleted && r.Response != nil:
		res.Response = answer(r.Response, r.Response.Header().Get("X-Request-Id"))
	case r.Status == llmdrain.StatusCompleted && r.Embeddings != nil:
		res.Response = answer(r.Embeddings, r.Embeddings.Header().Get("X-Request-Id"))
	case r.Status == llmdrain.StatusFailed:
		var apiErr *openai.APIError
		var reqErr *openai.RequestError
		switch {
		case errors.As(r.Err, &apiErr) && apiErr.HTTPStatusCode > 0:
			body, _ := json.Marshal(map[string]any{"error": map[string]any{
				"message": apiErr.Message, "type": apiErr.Type, "param": apiErr.Param, "code": apiErr.Code}})
			res.Response = &Response{StatusCode: apiErr.HTTPStatusCode, Body: body}
		case errors.As(r.Err, &reqErr) && reqErr.HTTPStatusCode > 0:
			body, _ := json.Marshal(map[string]any{"error": map[string]any{
				"message": strings.TrimSpace(reqErr.Error()), "type": nil, "param": nil, "code": nil}})
			res.Response = &Response{StatusCode: reqErr.HTTPStatusCode, Body: body}
		case errors.Is(r.Err, llmdrain.ErrEmptyResponse) && r.Response != nil:
			res.Response = answer(r.Response, r.Response.Header().Get("X-Request-Id"))
		default:
			res.Error = &Error{Code: CodeRequestFailed, Message: fmt.Sprint(r.Err)}
		}
	default:
		return Result{}, false
	}
	return res, true
}

func answer(v any, requestID string) *Response {
	body, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	return &Response{StatusCode: 200, RequestID: requestID, Body: body}
}

// ResultID is the id of the output line of a custom_id.
func ResultID(customID string) string {
	sum := sha256.Sum256([]byte(customID))
	return "batch_req_" + hex.EncodeToString(sum[:12])
}
