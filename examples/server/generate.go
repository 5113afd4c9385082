package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
)

// maxRequestBody bounds a generate request.
const maxRequestBody = 1 << 20

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
type generator struct {
	client *llmdrain.Client
	log    *slog.Logger
}

func (g *generator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var req generateRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody)).Decode(&req); err != nil {
		writeJSON(w, http.StatusBadRequest, errorResponse{"invalid JSON body: " + err.Error()})
		return
	}
	if strings.TrimSpace(req.Prompt) == "" {
		writeJSON(w, http.StatusBadRequest, errorResponse{`"prompt" is required`})
		return
	}
	chat := openai.ChatCompletionRequest{
		Model:    req.Model, // empty: the client's default
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: req.Prompt}},
	}
	g.log.DebugContext(r.Context(), "generate started", "stream", req.Stream, "model", req.Model)
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
	writeJSON(w, http.StatusOK, generateResponse{Text: resp.Choices[0].Message.Content})
}

// stream relays the answer as server-sent events. The status is only sent
// once the LLM has started answering, so a refused or failed call still
// gets a proper error status.
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
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	for {
		chunk, err := st.Recv()
		if errors.Is(err, io.EOF) {
			fmt.Fprint(w, "data: [DONE]\n\n")
			_ = rc.Flush()
			return
		}
		if err != nil {
			// The upstream stream was cut (truncated, cancelled, reset).
			// Say so, and end without [DONE] so that no client can take
			// the partial answer for a complete one.
			g.log.WarnContext(r.Context(), "generate stream cut off", "error", err)
			b, _ := json.Marshal(errorResponse{publicError(err)})
			fmt.Fprintf(w, "event: error\ndata: %s\n\n", b)
			_ = rc.Flush()
			return
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content == "" {
				continue
			}
			b, _ := json.Marshal(generateResponse{Text: c.Delta.Content})
			fmt.Fprintf(w, "data: %s\n\n", b)
		}
		if err := rc.Flush(); err != nil {
			return // our client went away; the deferred Close ends the call
		}
	}
}

// fail answers a failed LLM call with the status that tells the client
// what to do: 503 retry elsewhere, 429 slow down, 400 fix the request,
// 502 the LLM API failed.
func (g *generator) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		// Nobody is listening; 499 (nginx's "client closed request") is
		// for the access log.
		g.log.InfoContext(r.Context(), "generate abandoned by the client", "error", err)
		w.WriteHeader(499)
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
	writeJSON(w, status, errorResponse{publicError(err)})
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
