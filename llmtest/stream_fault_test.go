package llmtest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// sseLines starts a raw streamed chat request under ctx and returns its
// response and a channel of its body's lines, closed at the body's end.
func sseLines(t *testing.T, ctx context.Context, srv *llmtest.Server, prompt string) (*http.Response, <-chan string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/chat/completions", strings.NewReader(chatBody(prompt, true)))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := newHTTPClient(t).Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { resp.Body.Close() })
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if sc.Text() != "" {
				lines <- sc.Text()
			}
		}
	}()
	return resp, lines
}

// drainLines reads what is left of lines, so the reader goroutine ends.
func drainLines(lines <-chan string) {
	for range lines {
	}
}

func TestFirstTokenDelaySendsHeadersFirst(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.FirstTokenDelay(time.Hour))
	ctx, cancel := context.WithCancel(testContext(t))
	resp, lines := sseLines(t, ctx, srv, "thinking")
	assert.Equal(t, http.StatusOK, resp.StatusCode, "the headers came before the first event")
	select {
	case l := <-lines:
		t.Fatalf("an event came before the delay: %q", l)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	drainLines(lines)
	assert.Equal(t, 0, settled(t, srv).Succeeded)

	// A short delay: the whole answer follows, and counts as a success.
	srv.Script(llmtest.FirstTokenDelay(20 * time.Millisecond))
	text, err := streamText(t, newClient(t, srv), "thought")
	require.ErrorIs(t, err, io.EOF)
	assert.Equal(t, llmtest.Reply("thought"), text)
	assert.Equal(t, 1, srv.Completed("thought"))

	srv.Script(llmtest.FirstTokenDelay(20 * time.Millisecond))
	resp2, err := newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("plain"))
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("plain"), resp2.Choices[0].Message.Content)
	assert.Equal(t, []string{"200 (first token delay)", "200 (first token delay)"},
		[]string{srv.History("thought")[0].String(), srv.History("plain")[0].String()})
}

// streamText reads a stream through go-openai to its end and returns the
// text and the error that ended it.
func streamText(t *testing.T, c *openai.Client, prompt string) (string, error) {
	t.Helper()
	req := chatRequest(prompt)
	req.Stream = true
	st, err := c.CreateChatCompletionStream(testContext(t), req)
	if err != nil {
		return "", err
	}
	defer st.Close()
	var b strings.Builder
	for {
		chunk, err := st.Recv()
		if err != nil {
			return b.String(), err
		}
		for _, c := range chunk.Choices {
			b.WriteString(c.Delta.Content)
		}
	}
}

func TestStallGoesSilent(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Stall(2))
	ctx, cancel := context.WithCancel(testContext(t))
	_, lines := sseLines(t, ctx, srv, "one two three four")
	var got []string
	for range 3 { // the role chunk and two words
		got = append(got, <-lines)
	}
	assert.Contains(t, got[1], `"content":"You `)
	select {
	case l := <-lines:
		t.Fatalf("the stream went on after the stall: %q", l)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	drainLines(lines)
	st := settled(t, srv)
	assert.Equal(t, 1, st.Faults)
	assert.Equal(t, 0, st.Succeeded)
	assert.Equal(t, "200 (stall)", srv.History("one two three four")[0].String())
}

func TestStallWithKeepAlive(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Stall(0).WithKeepAlive(5 * time.Millisecond))
	ctx, cancel := context.WithCancel(testContext(t))
	_, lines := sseLines(t, ctx, srv, "quiet")
	assert.Contains(t, <-lines, `"role":"assistant"`)
	for range 3 {
		assert.Equal(t, ": keep-alive", <-lines)
	}
	cancel()
	drainLines(lines)
	assert.Equal(t, 0, settled(t, srv).InFlight)
}

func TestStallPlainBody(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Stall(0))
	ctx, cancel := context.WithCancel(testContext(t))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/chat/completions", strings.NewReader(chatBody("slow body", false)))
	require.NoError(t, err)
	resp, err := newHTTPClient(t).Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	half := make([]byte, resp.ContentLength/2)
	_, err = io.ReadFull(resp.Body, half)
	require.NoError(t, err, "half the body comes")
	read := make(chan error, 1)
	go func() { _, err := resp.Body.Read(make([]byte, 1)); read <- err }()
	select {
	case err := <-read:
		t.Fatalf("the rest of the body came: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	require.Error(t, <-read)
	assert.Equal(t, 1, settled(t, srv).Faults)
}

func TestMalformedEvent(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Malformed(2))
	_, lines := sseLines(t, testContext(t), srv, "a b c")
	var got []string
	for l := range lines {
		got = append(got, l)
	}
	require.Len(t, got, 1+len(strings.Fields(llmtest.Reply("a b c")))+2, "role, words, finish, [DONE]: %q", got)
	for i, l := range got[:len(got)-1] {
		data := strings.TrimPrefix(l, "data: ")
		assert.Equal(t, i != 2, json.Valid([]byte(data)), "event %d: %s", i, data)
	}
	assert.Equal(t, "data: [DONE]", got[len(got)-1])
	st := settled(t, srv)
	assert.Equal(t, 1, st.Faults)
	assert.Equal(t, 0, srv.Completed("a b c"), "a malformed answer is no success")
	assert.Equal(t, "200 (malformed)", srv.History("a b c")[0].String())

	// Through go-openai the broken event is a decoding error.
	srv.Script(llmtest.Malformed(1))
	_, err := streamText(t, newClient(t, srv), "x y")
	var syntax *json.SyntaxError
	assert.True(t, errors.As(err, &syntax) || strings.Contains(fmtErr(err), "unexpected end of JSON"), "got %v", err)

	srv.Script(llmtest.Malformed(1))
	_, err = newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("plain"))
	require.Error(t, err, "a plain answer that is no JSON")
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestNoDone(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.NoDone())
	_, lines := sseLines(t, testContext(t), srv, "whole but unmarked")
	var got []string
	for l := range lines {
		got = append(got, l)
	}
	require.NotEmpty(t, got)
	last := got[len(got)-1]
	assert.NotContains(t, last, "[DONE]")
	assert.Contains(t, last, `"finish_reason":"stop"`)
	assert.Equal(t, 1, srv.Completed("whole but unmarked"), "the answer is whole: a success")

	srv.Script(llmtest.NoDone())
	resp, err := newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("plain"))
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("plain"), resp.Choices[0].Message.Content)
}

func TestStatusWithCode(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(http.StatusBadRequest).WithCode("context_length_exceeded"))
	_, err := newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("long"))
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusBadRequest, apiErr.HTTPStatusCode)
	assert.Equal(t, "context_length_exceeded", apiErr.Code)
	assert.Equal(t, "invalid_request_error", apiErr.Type)
	assert.Equal(t, "400 (status 400 context_length_exceeded)", srv.History("long")[0].String())
}

func TestChatWithoutMessages(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(http.StatusTeapot)) // must not be consumed
	resp, err := postChat(t, newHTTPClient(t), srv, `{"model":"gpt-4o","messages":[]}`)
	require.NoError(t, err)
	body, err := readAll(t, resp)
	require.NoError(t, err)
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	var env struct {
		Error struct {
			Message string
			Param   string
		}
	}
	require.NoError(t, json.Unmarshal(body, &env))
	assert.Equal(t, "[] is too short - 'messages'", env.Error.Message)
	assert.Equal(t, "messages", env.Error.Param)

	_, err = newClient(t, srv).CreateChatCompletion(testContext(t), chatRequest("next"))
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr, "the scripted fault is still queued")
	assert.Equal(t, http.StatusTeapot, apiErr.HTTPStatusCode)
}

func TestModelByID(t *testing.T) {
	srv := newServer(t)
	c := newClient(t, srv)
	m, err := c.GetModel(testContext(t), "gpt-4o")
	require.NoError(t, err)
	assert.Equal(t, "gpt-4o", m.ID)
	assert.Equal(t, "model", m.Object)

	_, err = c.GetModel(testContext(t), "gpt-nonexistent")
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusNotFound, apiErr.HTTPStatusCode)
	assert.Equal(t, "model_not_found", apiErr.Code)
	assert.Contains(t, apiErr.Message, "gpt-nonexistent")

	resp, err := doRequest(t, newHTTPClient(t), http.MethodDelete, srv.URL+"/models/gpt-4o", "", nil)
	require.NoError(t, err)
	_, _ = readAll(t, resp)
	assert.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}
