package llmdrain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"

	"github.com/llmdrain/llmdrain/llmtest"
)

// scenarioTimeout stands in for the 60 s defaults of FirstTokenTimeout and
// StreamIdleTimeout, scaled down so the table runs in seconds. Everything
// else is at its default: retries, the jittered backoff, the breaker.
const scenarioTimeout = 300 * time.Millisecond

// TestProviderScenarios runs each way a provider misbehaves against a
// client with one target and against one with a fallback, and prints what
// the caller got, after how many requests and how long: the table in
// RELIABILITY.md. Each outcome is asserted.
func TestProviderScenarios(t *testing.T) {
	if testing.Short() {
		t.Skip("about half a minute of real backoffs")
	}
	type call func(ctx context.Context, c *Client, prompt string) error
	chat := func(ctx context.Context, c *Client, prompt string) error {
		text, err := c.Chat(ctx, prompt)
		if err == nil && text != llmtest.Reply(prompt) {
			return fmt.Errorf("wrong answer %q", text)
		}
		return err
	}
	plain := func(ctx context.Context, c *Client, prompt string) error {
		_, err := c.CreateChatCompletion(ctx, userMsg(prompt))
		return err
	}
	stream := func(ctx context.Context, c *Client, prompt string) error {
		s, err := c.CreateChatCompletionStream(ctx, userMsg(prompt))
		if err != nil {
			return err
		}
		defer s.Close()
		text, err := readStream(s)
		if err == nil && text != llmtest.Reply(prompt) {
			return fmt.Errorf("wrong answer %q", text)
		}
		return err
	}
	is := func(target error) func(error) bool { return func(err error) bool { return errors.Is(err, target) } }
	status := func(code int) func(error) bool {
		return func(err error) bool {
			var apiErr *openai.APIError
			return errors.As(err, &apiErr) && apiErr.HTTPStatusCode == code
		}
	}
	ok := func(err error) bool { return err == nil }
	repeatFault := func(f llmtest.Fault, n int) []llmtest.Fault {
		out := make([]llmtest.Fault, n)
		for i := range out {
			out[i] = f
		}
		return out
	}
	scenarios := []struct {
		name     string
		call     call
		script   []llmtest.Fault // on the primary
		single   func(error) bool
		fallback func(error) bool
	}{
		{"429 twice, with retry-after-ms", plain, repeatFault(llmtest.RateLimitedMS(50*time.Millisecond), 2), ok, ok},
		{"503 on every attempt", plain, repeatFault(llmtest.Status(503), 8), status(503), ok},
		{"connection reset twice", plain, repeatFault(llmtest.Reset(), 2), ok, ok},
		{"silence: no answer at all", plain, repeatFault(llmtest.Hang(), 8), is(context.DeadlineExceeded), ok},
		{"slow first token on a stream", stream, []llmtest.Fault{llmtest.FirstTokenDelay(time.Hour)}, ok, ok},
		{"stream cut mid-answer", stream, []llmtest.Fault{llmtest.Truncate(2)}, is(io.ErrUnexpectedEOF), is(io.ErrUnexpectedEOF)},
		{"stream cut mid-answer, through Chat", chat, []llmtest.Fault{llmtest.Truncate(2)}, ok, ok},
		{"stream stalls mid-answer", stream, []llmtest.Fault{llmtest.Stall(2)}, is(ErrStreamStalled), is(ErrStreamStalled)},
		{"stream stalls, keep-alives flowing, through Chat", chat, []llmtest.Fault{llmtest.Stall(2).WithKeepAlive(20 * time.Millisecond)}, ok, ok},
		{"malformed event", stream, []llmtest.Fault{llmtest.Malformed(2)}, is(ErrMalformedEvent), is(ErrMalformedEvent)},
		{"malformed event, through Chat", chat, []llmtest.Fault{llmtest.Malformed(2)}, ok, ok},
		{"no [DONE] after finish_reason", stream, []llmtest.Fault{llmtest.NoDone()}, ok, ok},
		{"plain body cut mid-way", plain, []llmtest.Fault{llmtest.Truncate(0)}, ok, ok},
		{"400 context_length_exceeded", plain, []llmtest.Fault{llmtest.Status(400).WithCode("context_length_exceeded")}, status(400), ok},
		{"400 invalid request", plain, []llmtest.Fault{llmtest.Status(400)}, status(400), status(400)},
	}

	var table strings.Builder
	table.WriteString("| provider does | call | one target: caller gets | requests | took | with a fallback: caller gets | requests (primary + fallback) | took |\n")
	table.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, sc := range scenarios {
		kind := map[bool]string{true: "stream", false: "plain"}[strings.Contains(sc.name, "stream") || strings.Contains(sc.name, "token") || strings.Contains(sc.name, "event") || strings.Contains(sc.name, "DONE")]
		if strings.Contains(sc.name, "through Chat") {
			kind = "Chat"
		}
		var row [2]string
		for i, withFallback := range []bool{false, true} {
			primary := newServer(t)
			primary.Script(sc.script...)
			cfg := Config{FirstTokenTimeout: scenarioTimeout, StreamIdleTimeout: scenarioTimeout, Backoff: DefaultBackoff}
			var fb *llmtest.Server
			if withFallback {
				fb = newServer(t)
				cfg.Fallbacks = []Target{{BaseURL: fb.URL, LongContext: true}}
			}
			c := newTestClient(t, primary, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			start := time.Now()
			err := sc.call(ctx, c, "tell me about "+sc.name)
			took := time.Since(start)
			cancel()
			want := sc.single
			if withFallback {
				want = sc.fallback
			}
			assert.True(t, want(err), "%s (fallback %v): got %v", sc.name, withFallback, err)
			requests := fmt.Sprint(primary.Stats().Requests)
			if fb != nil {
				requests += fmt.Sprintf(" + %d", fb.Stats().Requests)
			}
			row[i] = fmt.Sprintf("%s | %s | %s", outcomeOf(err), requests, took.Round(10*time.Millisecond))
		}
		fmt.Fprintf(&table, "| %s | %s | %s | %s |\n", sc.name, kind, row[0], row[1])
	}
	t.Logf("\n%s", table.String())
	if testing.Verbose() {
		fmt.Print("\n" + table.String() + "\n")
	}
}

// outcomeOf names what a caller got, for the table.
func outcomeOf(err error) string {
	var (
		apiErr *openai.APIError
		re     *RetryError
	)
	switch {
	case err == nil:
		return "the answer"
	case errors.Is(err, ErrStreamStalled):
		return "`ErrStreamStalled`"
	case errors.Is(err, ErrMalformedEvent):
		return "`ErrMalformedEvent`"
	case errors.As(err, &apiErr):
		return fmt.Sprintf("`*openai.APIError` %d", apiErr.HTTPStatusCode)
	case errors.As(err, &re) && errors.Is(err, context.DeadlineExceeded):
		return "`*RetryError`, a timeout"
	case errors.As(err, &re):
		return "`*RetryError`"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "`io.ErrUnexpectedEOF` (nothing replayed)"
	case errors.Is(err, context.DeadlineExceeded):
		return "a timeout"
	}
	return fmt.Sprintf("%T", err)
}
