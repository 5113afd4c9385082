package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/internal/serversettings"
)

type generateRequest struct {
	Prompt string `json:"prompt"`
	Model  string `json:"model,omitempty"`
	Stream bool   `json:"stream,omitempty"`
}

type generateResponse struct {
	Text string `json:"text"`
}

type errorResponse struct {
	Error string `json:"error"`
}

// generator serves POST /v1/generate. Its LLM calls run under the request's
// context, so a client that goes away cancels its call; the drain, not the
// signal, decides when calls are cut.
//
// Every phase of a client's request is bounded, so that no client, slow or
// hostile, can hold memory, a handler or the drain: admission (slots) before
// the body is read, the body's size and the time to send it, and each write
// of the answer.
type generator struct {
	client *llmdrain.Client
	log    *slog.Logger
	cfg    serversettings.Settings
	slots  chan struct{} // one per generate admitted; cap MaxInFlight
}

func newGenerator(client *llmdrain.Client, log *slog.Logger, cfg serversettings.Settings) *generator {
	return &generator{client: client, log: log, cfg: cfg, slots: make(chan struct{}, cfg.MaxInFlight)}
}

func (g *generator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Admission first, before a byte of the body is read: a full replica
	// answers at once and cheaply, and the load balancer tries another.
	select {
	case g.slots <- struct{}{}:
		defer func() { <-g.slots }()
	default:
		// The body stays unread. net/http would read it before answering,
		// and after, to reuse the connection: the connection ends with the
		// answer instead, and reads of it fail at once.
		w.Header().Set("Connection", "close")
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "busy: too many requests in flight here; retry")
		return
	}
	req, status, msg := g.read(w, r)
	if status != 0 {
		// A body that timed out also ends the request's context; that
		// client may still be listening, and is told 408.
		if r.Context().Err() != nil && status != http.StatusRequestTimeout {
			g.abandoned(w, r, errors.New(msg))
			return
		}
		writeError(w, status, msg)
		return
	}
	model := req.Model
	if model == "" {
		model = g.cfg.AllowedModels[0]
	}
	if !slices.Contains(g.cfg.AllowedModels, model) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("model %q is not available here; use one of: %s", model, strings.Join(g.cfg.AllowedModels, ", ")))
		return
	}
	chat := openai.ChatCompletionRequest{
		Model:               model,
		Messages:            []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: req.Prompt}},
		MaxCompletionTokens: g.cfg.MaxOutputTokens,
	}
	g.log.DebugContext(r.Context(), "generate started", "stream", req.Stream, "model", model)
	if req.Stream {
		g.stream(w, r, chat)
		return
	}
	resp, err := g.client.CreateChatCompletion(r.Context(), chat)
	if err != nil {
		g.fail(w, r, err)
		return
	}
	if len(resp.Choices) == 0 {
		g.fail(w, r, llmdrain.ErrEmptyResponse)
		return
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(g.cfg.WriteTimeout))
	writeJSON(w, http.StatusOK, generateResponse{Text: resp.Choices[0].Message.Content})
}

// read decodes the request: exactly one JSON object with known fields, of
// at most MaxBodyBytes, sent within BodyTimeout. On failure it returns the
// status and a message for the client.
//
// The body is read to its end, whatever its framing: only then does
// net/http watch the connection and cancel the request's context when the
// client goes away, which is what cancels its LLM call.
func (g *generator) read(w http.ResponseWriter, r *http.Request) (generateRequest, int, string) {
	var req generateRequest
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		return req, http.StatusUnsupportedMediaType, `send the request as JSON, with "Content-Type: application/json"`
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(g.cfg.BodyTimeout))

	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, g.cfg.MaxBodyBytes))
	dec.DisallowUnknownFields()
	err := dec.Decode(&req)
	if err == nil {
		// Nothing but white space may follow the object.
		var (
			tooBig *http.MaxBytesError
			netErr net.Error
		)
		switch _, terr := dec.Token(); {
		case terr == io.EOF:
		case errors.As(terr, &tooBig), errors.As(terr, &netErr):
			err = terr
		default:
			err = errTrailing
		}
	}
	if err != nil {
		// What is left of the body is unknown: net/http would try to
		// read it before answering, and wait for a client that sends no
		// more. The connection ends with this answer instead.
		w.Header().Set("Connection", "close")
		status, msg := bodyError(err, g.cfg.MaxBodyBytes)
		return req, status, msg
	}
	// A read deadline left in place would also end the connection's
	// watch for a client that goes away, in the middle of a long answer.
	_ = rc.SetReadDeadline(time.Time{})
	if strings.TrimSpace(req.Prompt) == "" {
		return req, http.StatusBadRequest, `"prompt" is required`
	}
	return req, 0, ""
}

var errTrailing = errors.New("trailing data")

// bodyError says what is wrong with a request body in a client's terms,
// not Go's.
func bodyError(err error, limit int64) (int, string) {
	var (
		tooBig    *http.MaxBytesError
		syntax    *json.SyntaxError
		wrongType *json.UnmarshalTypeError
		netErr    net.Error
	)
	switch {
	case errors.As(err, &tooBig):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", limit)
	case errors.As(err, &netErr) && netErr.Timeout():
		return http.StatusRequestTimeout, "request body not received in time"
	case errors.Is(err, errTrailing):
		return http.StatusBadRequest, "invalid JSON body: data after the JSON object"
	case errors.As(err, &syntax):
		return http.StatusBadRequest, fmt.Sprintf("invalid JSON body: syntax error at byte %d", syntax.Offset)
	case errors.As(err, &wrongType):
		want := wrongType.Type.Kind().String()
		if want == "bool" {
			want = "boolean"
		}
		return http.StatusBadRequest, fmt.Sprintf("invalid JSON body: %q must be a %s", wrongType.Field, want)
	case errors.Is(err, io.EOF):
		return http.StatusBadRequest, "invalid JSON body: the body is empty"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return http.StatusBadRequest, "invalid JSON body: it ends in the middle"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		// encoding/json has no type for it; the field name is the client's own.
		return http.StatusBadRequest, "invalid JSON body: " + strings.TrimPrefix(err.Error(), "json: ")
	}
	return http.StatusBadRequest, "invalid JSON body"
}

// stream relays the answer as server-sent events. The status is only sent
// once the LLM has started answering, so a refused or failed call still
// gets a proper error status. Each event must be written within
// WriteTimeout: a client that stops reading is dropped, and with it the
// LLM call.
func (g *generator) stream(w http.ResponseWriter, r *http.Request, chat openai.ChatCompletionRequest) {
	chat.Stream = true
	st, err := g.client.CreateChatCompletionStream(r.Context(), chat)
	if err != nil {
		g.fail(w, r, err)
		return
	}
	// Closing the stream ends the LLM call for the drain, whatever happens
	// to our client.
	defer st.Close()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the events
	rc := http.NewResponseController(w)
	send := func(format string, args ...any) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(g.cfg.WriteTimeout))
		if _, err := fmt.Fprintf(w, format, args...); err != nil {
			g.abandoned(w, r, err)
			return false
		}
		if err := rc.Flush(); err != nil {
			g.abandoned(w, r, err)
			return false
		}
		return true
	}
	w.WriteHeader(http.StatusOK)
	for {
		chunk, err := st.Recv()
		if errors.Is(err, io.EOF) {
			send("data: [DONE]\n\n")
			return
		}
		if err != nil {
			if r.Context().Err() != nil {
				g.abandoned(w, r, err)
				return
			}
			// The upstream stream was cut (truncated, cancelled, reset).
			// Say so, and end without [DONE] so that no client can take
			// the partial answer for a complete one.
			g.log.WarnContext(r.Context(), "generate stream cut off", "error", err)
			b, _ := json.Marshal(errorResponse{publicError(err)})
			send("event: error\ndata: %s\n\n", b)
			return
		}
		var b strings.Builder
		for _, c := range chunk.Choices {
			if c.Delta.Content == "" {
				continue
			}
			piece, _ := json.Marshal(generateResponse{Text: c.Delta.Content})
			fmt.Fprintf(&b, "data: %s\n\n", piece)
		}
		if b.Len() > 0 && !send("%s", b.String()) {
			return // the deferred Close ends the LLM call
		}
	}
}

// abandoned logs a client that went away, or stopped reading, as 499
// (nginx's "client closed request"), plain and streamed alike.
func (g *generator) abandoned(w http.ResponseWriter, r *http.Request, err error) {
	g.log.InfoContext(r.Context(), "generate abandoned by the client", "error", err)
	logStatus(w, 499)
}

// fail answers a failed LLM call with the status that tells the client
// what to do: 503 retry elsewhere, 429 slow down, 400 fix the request,
// 502 the LLM API failed.
func (g *generator) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// Nobody is listening.
		g.abandoned(w, r, err)
		return
	}
	status := http.StatusBadGateway
	var apiErr *openai.APIError
	switch {
	case errors.Is(err, llmdrain.ErrDraining), errors.Is(err, llmdrain.ErrForcedShutdown):
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "1")
	case errors.As(err, &apiErr) && apiErr.HTTPStatusCode == http.StatusTooManyRequests:
		// The LLM API kept saying "slow down" through all of llmdrain's
		// retries: pass that on honestly, with a hint, rather than
		// pretending the service failed. go-openai keeps no response
		// headers, so the upstream's own hint is not known here; one
		// second is a conservative floor for a client's next try.
		status = http.StatusTooManyRequests
		w.Header().Set("Retry-After", "1")
	case errors.As(err, &apiErr) && (apiErr.HTTPStatusCode == http.StatusBadRequest ||
		apiErr.HTTPStatusCode == http.StatusNotFound || apiErr.HTTPStatusCode == http.StatusUnprocessableEntity):
		status = http.StatusBadRequest
	}
	g.log.WarnContext(r.Context(), "generate failed", "status", status, "error", err)
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(g.cfg.WriteTimeout))
	writeError(w, status, publicError(err))
}

// publicError is what a client is told. The LLM API's message is passed on
// for request errors only: an authentication error's message may quote
// part of the key.
func publicError(err error) string {
	var apiErr *openai.APIError
	switch {
	case errors.Is(err, llmdrain.ErrDraining):
		return "shutting down: retry on another instance"
	case errors.Is(err, llmdrain.ErrForcedShutdown):
		return "shutting down: the call was cut at the drain deadline"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "the LLM stream was cut off: the answer is incomplete"
	case errors.As(err, &apiErr):
		switch apiErr.HTTPStatusCode {
		case http.StatusBadRequest, http.StatusNotFound, http.StatusUnprocessableEntity:
			return "the LLM API rejected the request: " + apiErr.Message
		case http.StatusTooManyRequests:
			return "rate limited by the LLM API: retry later"
		}
		return fmt.Sprintf("the LLM API failed (status %d)", apiErr.HTTPStatusCode)
	}
	return "the LLM API could not be reached"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorResponse{msg})
}
