package llmtest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// chatParams are the request fields the server validates, decoded apart
// from go-openai's request type: a field left out must be told from one
// sent as zero, as the API does ("n": 0 is an error; no "n" is 1).
type chatParams struct {
	Model               *string           `json:"model"`
	Messages            []messageParams   `json:"messages"`
	Temperature         *float64          `json:"temperature"`
	TopP                *float64          `json:"top_p"`
	N                   *int              `json:"n"`
	MaxTokens           *int              `json:"max_tokens"`
	MaxCompletionTokens *int              `json:"max_completion_tokens"`
	PresencePenalty     *float64          `json:"presence_penalty"`
	FrequencyPenalty    *float64          `json:"frequency_penalty"`
	Logprobs            *bool             `json:"logprobs"`
	TopLogprobs         *int              `json:"top_logprobs"`
	Tools               []json.RawMessage `json:"tools"`
	ToolChoice          json.RawMessage   `json:"tool_choice"`
	ResponseFormat      *struct {
		Type string `json:"type"`
	} `json:"response_format"`
}

type messageParams struct {
	Role    string          `json:"role"`
	Content json.RawMessage `json:"content"`
}

// roles are the message roles the API accepts.
var roles = []string{"system", "assistant", "user", "function", "tool", "developer"}

// validateChat checks a decoded chat request's parameters as the real API
// does, and returns the fault of the API's answer to a request it rejects,
// with its message, param and code; ok when the request is valid.
func (s *Server) validateChat(body []byte) (Fault, bool) {
	var p chatParams
	if err := json.Unmarshal(body, &p); err != nil {
		return errorFault(http.StatusBadRequest, "We could not parse the JSON body of your request: "+err.Error()), false
	}
	bad := func(param, code, format string, args ...any) (Fault, bool) {
		return apiFault(http.StatusBadRequest, fmt.Sprintf(format, args...), param, code), false
	}
	if p.Model == nil || *p.Model == "" {
		return apiFault(http.StatusBadRequest, "you must provide a model parameter", "", ""), false
	}
	if len(p.Messages) == 0 {
		return bad("messages", "", "[] is too short - 'messages'")
	}
	for i, m := range p.Messages {
		if !slices.Contains(roles, m.Role) {
			return bad(fmt.Sprintf("messages[%d].role", i), "invalid_value",
				"Invalid value: '%s'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.", m.Role)
		}
	}
	for _, r := range []struct {
		name     string
		v        *float64
		min, max float64
	}{
		{"temperature", p.Temperature, 0, 2},
		{"top_p", p.TopP, 0, 1},
		{"presence_penalty", p.PresencePenalty, -2, 2},
		{"frequency_penalty", p.FrequencyPenalty, -2, 2},
	} {
		switch {
		case r.v == nil:
		case *r.v > r.max:
			return bad(r.name, "decimal_above_max_value",
				"Invalid '%s': decimal above maximum value. Expected a value <= %s, but got %s instead.", r.name, num(r.max), num(*r.v))
		case *r.v < r.min:
			return bad(r.name, "decimal_below_min_value",
				"Invalid '%s': decimal below minimum value. Expected a value >= %s, but got %s instead.", r.name, num(r.min), num(*r.v))
		}
	}
	for _, r := range []struct {
		name     string
		v        *int
		min, max int
	}{
		{"n", p.N, 1, 128},
		{"max_tokens", p.MaxTokens, 1, 1 << 31},
		{"max_completion_tokens", p.MaxCompletionTokens, 1, 1 << 31},
		{"top_logprobs", p.TopLogprobs, 0, 20},
	} {
		switch {
		case r.v == nil:
		case *r.v > r.max:
			return bad(r.name, "integer_above_max_value",
				"Invalid '%s': integer above maximum value. Expected a value <= %d, but got %d instead.", r.name, r.max, *r.v)
		case *r.v < r.min:
			return bad(r.name, "integer_below_min_value",
				"Invalid '%s': integer below minimum value. Expected a value >= %d, but got %d instead.", r.name, r.min, *r.v)
		}
	}
	if p.TopLogprobs != nil && (p.Logprobs == nil || !*p.Logprobs) {
		return bad("top_logprobs", "invalid_value", "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.")
	}
	if len(p.ToolChoice) > 0 && string(p.ToolChoice) != "null" && len(p.Tools) == 0 {
		return bad("tool_choice", "invalid_value", "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.")
	}
	if rf := p.ResponseFormat; rf != nil {
		switch rf.Type {
		case "text", "json_schema":
		case "json_object":
			if !mentionsJSON(p.Messages) {
				return bad("messages", "", "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.")
			}
		default:
			return bad("response_format.type", "invalid_value",
				"Invalid value: '%s'. Supported values are: 'json_object', 'json_schema', and 'text'.", rf.Type)
		}
	}
	if len(s.models) > 0 && !slices.Contains(s.models, *p.Model) {
		return modelNotFound(*p.Model), false
	}
	if s.contextWindow > 0 {
		tokens := promptTokens(p.Messages)
		if limit := outputLimit(p); tokens+limit > s.contextWindow {
			return apiFault(http.StatusBadRequest, fmt.Sprintf(
				"This model's maximum context length is %d tokens. However, you requested %d tokens (%d in the messages, %d in the completion). Please reduce the length of the messages or completion.",
				s.contextWindow, tokens+limit, tokens, limit), "messages", "context_length_exceeded"), false
		}
	}
	return Fault{}, true
}

// num renders a number as the API's messages do: 2, not 2.000000.
func num(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

// mentionsJSON reports whether any message's text contains "json", in any
// case, as json_object mode requires.
func mentionsJSON(msgs []messageParams) bool {
	for _, m := range msgs {
		if strings.Contains(strings.ToLower(string(m.Content)), "json") {
			return true
		}
	}
	return false
}

// promptTokens counts the words of every message: a word is a token here.
func promptTokens(msgs []messageParams) int {
	n := 0
	for _, m := range msgs {
		var text string
		if json.Unmarshal(m.Content, &text) != nil {
			text = string(m.Content) // multi-part content: near enough
		}
		n += len(strings.Fields(text))
	}
	return n
}

// outputLimit is the completion tokens a request reserves: its limit, if
// it sets one.
func outputLimit(p chatParams) int {
	switch {
	case p.MaxCompletionTokens != nil:
		return *p.MaxCompletionTokens
	case p.MaxTokens != nil:
		return *p.MaxTokens
	}
	return 0
}

// apiFault is the server's own error answer, in the API's format, with a
// param and a code (either may be empty: null).
func apiFault(status int, message, param, code string) Fault {
	typ, _ := errorKind(status)
	e := apiError{Message: message, Type: typ}
	if param != "" {
		e.Param = &param
	}
	if code != "" {
		e.Code = &code
	}
	return Fault{kind: kindStatus, status: status, body: string(mustJSON(apiErrorBody{Error: e})), hasBody: true}
}

// modelNotFound is the API's answer for a model it does not serve.
func modelNotFound(model string) Fault {
	return apiFault(http.StatusNotFound, fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", model), "", "model_not_found")
}

// authFault is the API's answer to a request without a key, or with the
// wrong one: the key masked as the API masks it.
func authFault(r *http.Request) Fault {
	if deployment(r) != "" {
		return apiFault(http.StatusUnauthorized, "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.", "", "401")
	}
	bearer, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || bearer == "" {
		return apiFault(http.StatusUnauthorized, "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.", "", "")
	}
	return apiFault(http.StatusUnauthorized, "Incorrect API key provided: "+maskKey(bearer)+". You can find your API key at https://platform.openai.com/account/api-keys.", "", "invalid_api_key")
}

// maskKey shows no more of a key than its first three and last four
// characters, as the API does; short keys not at all.
func maskKey(key string) string {
	if len(key) < 16 {
		return "********"
	}
	return key[:3] + strings.Repeat("*", 8) + key[len(key)-4:]
}
