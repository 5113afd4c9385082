package llmtest_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// TestValidatesLikeTheAPI sends each kind of invalid chat request the real
// API rejects, and checks the status, param and code it answers with. None
// consumes the script.
func TestValidatesLikeTheAPI(t *testing.T) {
	srv := newServer(t, llmtest.WithContextWindow(50))
	srv.Script(llmtest.Status(http.StatusTeapot)) // must survive every rejection
	c := newHTTPClient(t)
	msg := `"messages":[{"role":"user","content":"hi"}]`
	for _, tc := range []struct {
		name, body  string
		status      int
		param, code string
	}{
		{"no model", `{` + msg + `}`, 400, "", ""},
		{"no messages", `{"model":"gpt-4o","messages":[]}`, 400, "messages", ""},
		{"unknown role", `{"model":"gpt-4o","messages":[{"role":"wizard","content":"hi"}]}`, 400, "messages[0].role", "invalid_value"},
		{"temperature 3", `{"model":"gpt-4o",` + msg + `,"temperature":3}`, 400, "temperature", "decimal_above_max_value"},
		{"temperature -1", `{"model":"gpt-4o",` + msg + `,"temperature":-1}`, 400, "temperature", "decimal_below_min_value"},
		{"top_p 1.5", `{"model":"gpt-4o",` + msg + `,"top_p":1.5}`, 400, "top_p", "decimal_above_max_value"},
		{"presence_penalty 3", `{"model":"gpt-4o",` + msg + `,"presence_penalty":3}`, 400, "presence_penalty", "decimal_above_max_value"},
		{"n 0", `{"model":"gpt-4o",` + msg + `,"n":0}`, 400, "n", "integer_below_min_value"},
		{"max_tokens -5", `{"model":"gpt-4o",` + msg + `,"max_tokens":-5}`, 400, "max_tokens", "integer_below_min_value"},
		{"max_completion_tokens 0", `{"model":"gpt-4o",` + msg + `,"max_completion_tokens":0}`, 400, "max_completion_tokens", "integer_below_min_value"},
		{"top_logprobs without logprobs", `{"model":"gpt-4o",` + msg + `,"top_logprobs":2}`, 400, "top_logprobs", "invalid_value"},
		{"top_logprobs 21", `{"model":"gpt-4o",` + msg + `,"logprobs":true,"top_logprobs":21}`, 400, "top_logprobs", "integer_above_max_value"},
		{"tool_choice without tools", `{"model":"gpt-4o",` + msg + `,"tool_choice":"required"}`, 400, "tool_choice", "invalid_value"},
		{"response_format yaml", `{"model":"gpt-4o",` + msg + `,"response_format":{"type":"yaml"}}`, 400, "response_format.type", "invalid_value"},
		{"json_object without the word", `{"model":"gpt-4o",` + msg + `,"response_format":{"type":"json_object"}}`, 400, "messages", ""},
		{"unknown model", `{"model":"gpt-5-ultra",` + msg + `}`, 404, "", "model_not_found"},
		{"too long for the window", `{"model":"gpt-4o",` + msg + `,"max_completion_tokens":50}`, 400, "messages", "context_length_exceeded"},
	} {
		resp, err := postChat(t, c, srv, tc.body)
		require.NoError(t, err, tc.name)
		body, err := readAll(t, resp)
		require.NoError(t, err, tc.name)
		assert.Equal(t, tc.status, resp.StatusCode, "%s: %s", tc.name, body)
		var env struct {
			Error struct {
				Message string
				Param   *string
				Code    *string
			}
		}
		require.NoError(t, json.Unmarshal(body, &env), tc.name)
		assert.NotEmpty(t, env.Error.Message, tc.name)
		assert.Equal(t, tc.param, deref(env.Error.Param), "%s: param", tc.name)
		assert.Equal(t, tc.code, deref(env.Error.Code), "%s: code", tc.name)
	}
	st := settled(t, srv)
	assert.Zero(t, st.Succeeded)

	// The valid forms of the same parameters pass, and the scripted fault
	// is still the first thing a valid request meets.
	_, err := newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("hi"))
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusTeapot, apiErr.HTTPStatusCode)
	for _, body := range []string{
		`{"model":"gpt-4o",` + msg + `,"temperature":2,"top_p":1,"n":1,"max_tokens":5}`,
		`{"model":"gpt-4o",` + msg + `,"logprobs":true,"top_logprobs":3}`,
		`{"model":"gpt-4o","messages":[{"role":"developer","content":"answer in JSON"},{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}`,
	} {
		resp, err := postChat(t, c, srv, body)
		require.NoError(t, err)
		b, _ := readAll(t, resp)
		assert.Equal(t, http.StatusOK, resp.StatusCode, "%s: %s", body, b)
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func TestModelList(t *testing.T) {
	srv := newServer(t, llmtest.WithModels("mine"))
	c := newClient(t, srv)
	list, err := c.ListModels(testContext(t))
	require.NoError(t, err)
	require.Len(t, list.Models, 1)
	assert.Equal(t, "mine", list.Models[0].ID)
	req := chatRequest("x")
	req.Model = "gpt-4o"
	_, err = c.CreateChatCompletion(testContext(t), req)
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, "model_not_found", apiErr.Code)

	anyModel := newServer(t, llmtest.WithModels())
	req.Model = "anything-at-all"
	resp, err := newClient(t, anyModel).CreateChatCompletion(testContext(t), req)
	require.NoError(t, err)
	assert.Equal(t, "anything-at-all", resp.Model)
}

func TestAuthMessagesLikeTheAPI(t *testing.T) {
	srv := newServer(t, llmtest.WithAPIKey("sk-the-right-key-0123456789"))
	for _, tc := range []struct {
		name, auth, want, code string
	}{
		{"no key", "", "You didn't provide an API key.", ""},
		{"wrong key", "Bearer sk-the-wrong-key-9876543210", "Incorrect API key provided: sk-********3210.", "invalid_api_key"},
		{"short wrong key", "Bearer short", "Incorrect API key provided: ********.", "invalid_api_key"},
	} {
		h := http.Header{}
		if tc.auth != "" {
			h.Set("Authorization", tc.auth)
		}
		resp, err := doRequest(t, newHTTPClient(t), http.MethodPost, srv.URL+"/chat/completions", chatBody("x", false), h)
		require.NoError(t, err)
		body, _ := readAll(t, resp)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, tc.name)
		var env struct {
			Error struct {
				Message string
				Code    *string
			}
		}
		require.NoError(t, json.Unmarshal(body, &env))
		assert.Contains(t, env.Error.Message, tc.want, tc.name)
		assert.NotContains(t, env.Error.Message, "wrong-key", tc.name)
		assert.Equal(t, tc.code, deref(env.Error.Code), tc.name)
	}
}

// TestAnswersLikeTheAPI checks the parts of an answer a request asks for:
// n choices, log probabilities, a JSON answer in json_object mode, a forced
// tool call, and "usage": null on every chunk before the usage chunk.
func TestAnswersLikeTheAPI(t *testing.T) {
	srv := newServer(t)
	c := newClient(t, srv)
	ctx := testContext(t)

	req := chatRequest("two words")
	req.N = 3
	req.LogProbs = true
	req.TopLogProbs = 2
	resp, err := c.CreateChatCompletion(ctx, req)
	require.NoError(t, err)
	require.Len(t, resp.Choices, 3)
	for i, ch := range resp.Choices {
		assert.Equal(t, i, ch.Index)
		assert.Equal(t, llmtest.Reply("two words"), ch.Message.Content)
		require.NotNil(t, ch.LogProbs, "choice %d", i)
		require.Len(t, ch.LogProbs.Content, 4, "a log probability per word")
		assert.Equal(t, "You ", ch.LogProbs.Content[0].Token)
		assert.Len(t, ch.LogProbs.Content[0].TopLogProbs, 2)
	}
	assert.Equal(t, 3*4, resp.Usage.CompletionTokens, "every choice's tokens count")

	req.Stream = true
	st, err := c.CreateChatCompletionStream(ctx, req)
	require.NoError(t, err)
	texts := make([]string, 3)
	tokens := 0
	for {
		chunk, err := st.Recv()
		if err != nil {
			require.ErrorIs(t, err, io.EOF)
			break
		}
		for _, ch := range chunk.Choices {
			texts[ch.Index] += ch.Delta.Content
			if ch.Logprobs != nil {
				tokens += len(ch.Logprobs.Content)
			}
		}
	}
	st.Close()
	for i, text := range texts {
		assert.Equal(t, llmtest.Reply("two words"), text, "streamed choice %d", i)
	}
	assert.Equal(t, 3*4, tokens)

	// json_object: the answer is JSON.
	req = chatRequest("answer in JSON please")
	req.ResponseFormat = &openai.ChatCompletionResponseFormat{Type: openai.ChatCompletionResponseFormatTypeJSONObject}
	resp, err = c.CreateChatCompletion(ctx, req)
	require.NoError(t, err)
	var obj map[string]string
	require.NoError(t, json.Unmarshal([]byte(resp.Choices[0].Message.Content), &obj), "%q", resp.Choices[0].Message.Content)
	assert.Equal(t, llmtest.Reply("answer in JSON please"), obj["reply"])

	// A forced tool call, plain and streamed.
	req = chatRequest("what is the weather")
	req.Tools = []openai.Tool{{Type: openai.ToolTypeFunction, Function: &openai.FunctionDefinition{Name: "get_weather"}}}
	req.ToolChoice = openai.ToolChoice{Type: openai.ToolTypeFunction, Function: openai.ToolFunction{Name: "get_weather"}}
	resp, err = c.CreateChatCompletion(ctx, req)
	require.NoError(t, err)
	require.Len(t, resp.Choices[0].Message.ToolCalls, 1)
	assert.Equal(t, "get_weather", resp.Choices[0].Message.ToolCalls[0].Function.Name)
	assert.Equal(t, "{}", resp.Choices[0].Message.ToolCalls[0].Function.Arguments)
	assert.Equal(t, openai.FinishReasonToolCalls, resp.Choices[0].FinishReason)
	assert.Empty(t, resp.Choices[0].Message.Content)
	req.ToolChoice = "required"
	req.Stream = true
	st, err = c.CreateChatCompletionStream(ctx, req)
	require.NoError(t, err)
	var calls []openai.ToolCall
	var finish openai.FinishReason
	for {
		chunk, err := st.Recv()
		if err != nil {
			require.ErrorIs(t, err, io.EOF)
			break
		}
		for _, ch := range chunk.Choices {
			calls = append(calls, ch.Delta.ToolCalls...)
			if ch.FinishReason != "" {
				finish = ch.FinishReason
			}
		}
	}
	st.Close()
	require.Len(t, calls, 1)
	assert.Equal(t, "get_weather", calls[0].Function.Name)
	assert.Equal(t, openai.FinishReasonToolCalls, finish)

	// "usage": null before the usage chunk, when asked for.
	req = chatRequest("count me")
	req.Stream = true
	req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	httpResp, err := postChat(t, newHTTPClient(t), srv, string(mustMarshal(req)))
	require.NoError(t, err)
	body, err := readAll(t, httpResp)
	require.NoError(t, err)
	var events []map[string]json.RawMessage
	for _, line := range strings.Split(string(body), "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var ev map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(data), &ev))
		events = append(events, ev)
	}
	require.NotEmpty(t, events)
	for i, ev := range events[:len(events)-1] {
		assert.Equal(t, "null", string(ev["usage"]), "chunk %d", i)
	}
	assert.Contains(t, string(events[len(events)-1]["usage"]), `"completion_tokens"`)
}
