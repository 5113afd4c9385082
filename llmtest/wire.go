package llmtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// maxRequestBody bounds what the server reads from a client; far above any
// prompt a test sends.
const maxRequestBody = 10 << 20

// The JSON shapes below mirror the OpenAI API closely enough for go-openai
// and the official SDKs; they are spelled out rather than borrowed from
// go-openai so the bytes on the wire are exactly what this package documents.

type apiErrorBody struct {
	Error apiError `json:"error"`
}

type apiError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func newUsage(prompt, completion int) usage {
	return usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
}

// errorKind gives the OpenAI error type and code for an HTTP status, after
// what the real API sends.
func errorKind(status int) (typ string, code *string) {
	str := func(s string) *string { return &s }
	switch {
	case status == http.StatusUnauthorized:
		return "invalid_request_error", str("invalid_api_key")
	case status == http.StatusForbidden:
		return "permission_error", nil
	case status == http.StatusNotFound:
		return "invalid_request_error", str("not_found")
	case status == http.StatusRequestTimeout:
		return "timeout_error", nil
	case status == http.StatusConflict:
		return "conflict_error", nil
	case status == http.StatusTooManyRequests:
		return "requests", str("rate_limit_exceeded")
	case status >= 400 && status < 500:
		return "invalid_request_error", nil
	case status >= 500:
		return "server_error", nil
	default:
		return "api_error", nil
	}
}

// errorJSON renders the OpenAI error envelope.
func errorJSON(status int, message string) []byte {
	typ, code := errorKind(status)
	return mustJSON(apiErrorBody{Error: apiError{Message: message, Type: typ, Code: code}})
}

// respondAPIError answers with an OpenAI-format error after the server latency.
func (s *Server) respondAPIError(w http.ResponseWriter, r *http.Request, status int, message string) {
	if !s.wait(r.Context(), 0) {
		abort(w, false)
		return
	}
	writeBody(w, status, "application/json", errorJSON(status, message), nil)
}

// respondFault writes a Status fault (RateLimited faults are Status faults).
func respondFault(w http.ResponseWriter, f Fault) {
	body := errorJSON(f.status, fmt.Sprintf("llmtest: scripted %d %s", f.status, http.StatusText(f.status)))
	if f.code != "" {
		typ, _ := errorKind(f.status)
		code := f.code
		body = mustJSON(apiErrorBody{Error: apiError{Message: fmt.Sprintf("llmtest: scripted %d %s", f.status, code), Type: typ, Code: &code}})
	}
	contentType := "application/json"
	if f.hasBody {
		body = []byte(f.body)
		if !json.Valid(body) {
			contentType = "text/plain; charset=utf-8"
		}
	}
	writeBody(w, f.status, contentType, body, f.header)
}

// writeBody writes a complete response and flushes it, reporting whether the
// client was sent every byte.
func writeBody(w http.ResponseWriter, status int, contentType string, body []byte, extra http.Header) bool {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	overrideHeaders(h, extra)
	w.WriteHeader(status)
	if _, err := w.Write(body); err != nil {
		return false
	}
	return http.NewResponseController(w).Flush() == nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("llmtest: marshal %T: %v", v, err))
	}
	return b
}

// overrideHeaders copies src into dst, replacing dst's values for each key
// so a fault's headers win over the server's defaults.
func overrideHeaders(dst, src http.Header) {
	for k, vs := range src {
		dst[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
	}
}

// readBody reads the whole request body, up to maxRequestBody.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
}

func tooLarge(err error) bool {
	var tooBig *http.MaxBytesError
	return errors.As(err, &tooBig)
}
