package llmtest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

func TestReply(t *testing.T) {
	assert.Equal(t, "You said: hi there", llmtest.Reply("hi there"))
	assert.Equal(t, "You said: ", llmtest.Reply(""))
}

func TestChatPlain(t *testing.T) {
	srv := newServer(t)
	req := openai.ChatCompletionRequest{
		Model: "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessage{
			{Role: openai.ChatMessageRoleSystem, Content: "be brief"},
			{Role: openai.ChatMessageRoleUser, Content: "first question"},
			{Role: openai.ChatMessageRoleAssistant, Content: "an answer"},
			{Role: openai.ChatMessageRoleUser, Content: "hello  world"},
		},
	}
	resp, err := newClient(t, srv).CreateChatCompletion(testContext(t), req)
	require.NoError(t, err)

	assert.True(t, strings.HasPrefix(resp.ID, "chatcmpl-"), resp.ID)
	assert.Equal(t, "chat.completion", resp.Object)
	assert.Equal(t, "gpt-4o-mini", resp.Model)
	assert.InDelta(t, time.Now().Unix(), resp.Created, 60)
	require.Len(t, resp.Choices, 1)
	assert.Equal(t, 0, resp.Choices[0].Index)
	assert.Equal(t, openai.ChatMessageRoleAssistant, resp.Choices[0].Message.Role)
	assert.Equal(t, llmtest.Reply("hello  world"), resp.Choices[0].Message.Content, "reply to the last user message")
	assert.Equal(t, openai.FinishReasonStop, resp.Choices[0].FinishReason)
	// 2 + 2 + 2 + 2 words in, "You said: hello world" is 4 words out.
	assert.Equal(t, 8, resp.Usage.PromptTokens)
	assert.Equal(t, 4, resp.Usage.CompletionTokens)
	assert.Equal(t, 12, resp.Usage.TotalTokens)
	assert.Equal(t, "application/json", resp.Header().Get("Content-Type"))
}

func TestChatMultiContentPrompt(t *testing.T) {
	srv := newServer(t)
	req := openai.ChatCompletionRequest{
		Model: "gpt-4o",
		Messages: []openai.ChatCompletionMessage{{
			Role: openai.ChatMessageRoleUser,
			MultiContent: []openai.ChatMessagePart{
				{Type: openai.ChatMessagePartTypeText, Text: "look"},
				{Type: openai.ChatMessagePartTypeImageURL, ImageURL: &openai.ChatMessageImageURL{URL: "data:,"}},
				{Type: openai.ChatMessagePartTypeText, Text: "here"},
			},
		}},
	}
	resp, err := newClient(t, srv).CreateChatCompletion(testContext(t), req)
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("look\nhere"), resp.Choices[0].Message.Content)
	settled(t, srv)
	assert.Equal(t, 1, srv.Completed("look\nhere"))
}

func TestChatIDsAreUnique(t *testing.T) {
	srv := newServer(t)
	client := newClient(t, srv)
	const n = 16
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.CreateChatCompletion(testContext(t), chatRequest("id"))
			if assert.NoError(t, err) {
				ids <- resp.ID
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[string]bool{}
	for id := range ids {
		assert.False(t, seen[id], "duplicate id %s", id)
		seen[id] = true
	}
	assert.Len(t, seen, n)
}

func TestChatStream(t *testing.T) {
	srv := newServer(t)
	req := chatRequest("stream me please")
	stream, err := newClient(t, srv).CreateChatCompletionStream(testContext(t), req)
	require.NoError(t, err)
	defer stream.Close()

	first, err := stream.Recv()
	require.NoError(t, err)
	require.Len(t, first.Choices, 1)
	assert.Equal(t, openai.ChatMessageRoleAssistant, first.Choices[0].Delta.Role)
	assert.Equal(t, "chat.completion.chunk", first.Object)
	assert.Equal(t, "gpt-4o", first.Model)

	var content []string
	var finish openai.FinishReason
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		assert.Equal(t, first.ID, chunk.ID, "one id per response")
		require.Len(t, chunk.Choices, 1)
		require.Empty(t, finish, "no chunk after the finish chunk")
		if chunk.Choices[0].FinishReason != "" {
			finish = chunk.Choices[0].FinishReason
			assert.Empty(t, chunk.Choices[0].Delta.Content)
			continue
		}
		content = append(content, chunk.Choices[0].Delta.Content)
	}
	assert.Equal(t, openai.FinishReasonStop, finish)
	assert.Equal(t, []string{"You ", "said: ", "stream ", "me ", "please"}, content, "one chunk per word")
	assert.Equal(t, llmtest.Reply("stream me please"), strings.Join(content, ""))
}

// readEvents reads a whole SSE body and returns the data of each event.
func readEvents(t *testing.T, resp *http.Response) ([]string, error) {
	t.Helper()
	defer resp.Body.Close()
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		data, ok := strings.CutPrefix(line, "data: ")
		require.True(t, ok, "line %q is not a data line", line)
		events = append(events, data)
	}
	return events, sc.Err()
}

func TestChatStreamWireFormat(t *testing.T) {
	srv := newServer(t)
	resp, err := postChat(t, newHTTPClient(t), srv, chatBody("a b", true))
	require.NoError(t, err)
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	events, err := readEvents(t, resp)
	require.NoError(t, err)

	// role, "You ", "said: ", "a ", "b", finish, [DONE]
	require.Len(t, events, 7)
	assert.JSONEq(t, `{"role":"assistant"}`, delta(t, events[0]))
	assert.JSONEq(t, `{"content":"You "}`, delta(t, events[1]))
	assert.JSONEq(t, `{"content":"b"}`, delta(t, events[4]))
	assert.JSONEq(t, `{}`, delta(t, events[5]))
	assert.Contains(t, events[5], `"finish_reason":"stop"`)
	assert.Contains(t, events[1], `"finish_reason":null`)
	assert.NotContains(t, strings.Join(events, ""), "usage", "usage only on request")
	assert.Equal(t, "[DONE]", events[6])
}

// delta extracts choices[0].delta from a chunk.
func delta(t *testing.T, event string) string {
	t.Helper()
	var chunk struct {
		Choices []struct {
			Delta json.RawMessage `json:"delta"`
		} `json:"choices"`
	}
	require.NoError(t, json.Unmarshal([]byte(event), &chunk), event)
	require.Len(t, chunk.Choices, 1, event)
	return string(chunk.Choices[0].Delta)
}

func TestChatStreamIncludeUsage(t *testing.T) {
	srv := newServer(t)
	req := chatRequest("count these words")
	req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	stream, err := newClient(t, srv).CreateChatCompletionStream(testContext(t), req)
	require.NoError(t, err)
	defer stream.Close()

	var last openai.ChatCompletionStreamResponse
	sawFinish := false
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		if len(chunk.Choices) > 0 && chunk.Choices[0].FinishReason == openai.FinishReasonStop {
			sawFinish = true
			assert.Nil(t, chunk.Usage)
		}
		last = chunk
	}
	assert.True(t, sawFinish)
	assert.Empty(t, last.Choices, "the usage chunk has no choices")
	require.NotNil(t, last.Usage)
	assert.Equal(t, openai.Usage{PromptTokens: 3, CompletionTokens: 5, TotalTokens: 8}, *last.Usage)
}

func TestChatStreamFlushesEachChunk(t *testing.T) {
	// With an hour between chunks, the first chunk can only arrive if it
	// was flushed on its own; the client then gives up and the handler
	// must notice and return.
	srv := newServer(t, llmtest.WithChunkDelay(time.Hour))
	ctx, cancel := context.WithCancel(testContext(t))
	stream, err := newClient(t, srv).CreateChatCompletionStream(ctx, chatRequest("slow"))
	require.NoError(t, err)
	defer stream.Close()
	first, err := stream.Recv()
	require.NoError(t, err)
	assert.Equal(t, openai.ChatMessageRoleAssistant, first.Choices[0].Delta.Role)
	cancel()
	st := settled(t, srv)
	assert.Equal(t, 0, st.Succeeded)
	assert.Equal(t, 0, srv.Completed("slow"))
}

func TestChatMalformedJSON(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(http.StatusTeapot))
	c := newHTTPClient(t)

	resp, err := postChat(t, c, srv, `{"model": "gpt-4o", "messages": [`)
	require.NoError(t, err)
	body, err := readAll(t, resp)
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	assert.Equal(t, "invalid_request_error", decodeError(t, body))

	// The malformed request did not consume the script.
	resp, err = postChat(t, c, srv, chatBody("fine", false))
	require.NoError(t, err)
	_, err = readAll(t, resp)
	require.NoError(t, err)
	assert.Equal(t, http.StatusTeapot, resp.StatusCode)

	st := settled(t, srv)
	assert.Equal(t, 2, st.Requests)
	assert.Equal(t, 2, st.Faults)
}

func TestUnknownPathAndMethod(t *testing.T) {
	srv := newServer(t)
	c := newHTTPClient(t)
	for _, tc := range []struct {
		method, path string
		status       int
	}{
		{http.MethodPost, "/completions", http.StatusNotFound},
		{http.MethodGet, "/nope", http.StatusNotFound},
		{http.MethodGet, "/chat/completions", http.StatusMethodNotAllowed},
		{http.MethodPost, "/models", http.StatusMethodNotAllowed},
	} {
		resp, err := doRequest(t, c, tc.method, srv.URL+tc.path, "{}", nil)
		require.NoError(t, err)
		body, err := readAll(t, resp)
		require.NoError(t, err)
		assert.Equal(t, tc.status, resp.StatusCode, "%s %s", tc.method, tc.path)
		decodeError(t, body)
	}
	st := srv.Stats()
	assert.Equal(t, 4, st.Other)
	assert.Equal(t, 0, st.Requests)
}

func TestMaxTokensCutsTheReply(t *testing.T) {
	srv := newServer(t)
	c := newClient(t, srv)
	prompt := "one two three four five six"
	for _, tc := range []struct {
		name string
		set  func(*openai.ChatCompletionRequest)
	}{
		//lint:ignore SA1019 the deprecated field is still sent by clients
		{"max_tokens", func(r *openai.ChatCompletionRequest) { r.MaxTokens = 3 }},
		{"max_completion_tokens", func(r *openai.ChatCompletionRequest) { r.MaxCompletionTokens = 3 }},
	} {
		req := chatRequest(prompt)
		tc.set(&req)
		resp, err := c.CreateChatCompletion(testContext(t), req)
		require.NoError(t, err, tc.name)
		assert.Equal(t, "You said: one ", resp.Choices[0].Message.Content, tc.name)
		assert.Equal(t, openai.FinishReasonLength, resp.Choices[0].FinishReason, tc.name)
		assert.Equal(t, 3, resp.Usage.CompletionTokens, tc.name)

		req.Stream = true
		req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
		st, err := c.CreateChatCompletionStream(testContext(t), req)
		require.NoError(t, err, tc.name)
		var text strings.Builder
		var finish openai.FinishReason
		var usage *openai.Usage
		for {
			chunk, err := st.Recv()
			if err != nil {
				require.ErrorIs(t, err, io.EOF, tc.name)
				break
			}
			for _, ch := range chunk.Choices {
				text.WriteString(ch.Delta.Content)
				if ch.FinishReason != "" {
					finish = ch.FinishReason
				}
			}
			if chunk.Usage != nil {
				usage = chunk.Usage
			}
		}
		st.Close()
		assert.Equal(t, "You said: one ", text.String(), tc.name)
		assert.Equal(t, openai.FinishReasonLength, finish, tc.name)
		require.NotNil(t, usage, tc.name)
		assert.Equal(t, 3, usage.CompletionTokens, tc.name)
	}

	// A limit the reply fits in changes nothing.
	req := chatRequest(prompt)
	req.MaxCompletionTokens = 100
	resp, err := c.CreateChatCompletion(testContext(t), req)
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply(prompt), resp.Choices[0].Message.Content)
	assert.Equal(t, openai.FinishReasonStop, resp.Choices[0].FinishReason)
}
