package llmtest_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain/llmtest"
)

// A test scripts the server's misbehaviour, points an ordinary go-openai
// client at it and checks what the client saw.
func Example() {
	srv := llmtest.NewServer(llmtest.WithSeed(1))
	defer srv.Close()

	// The first request is rate limited, the second succeeds.
	srv.Script(llmtest.RateLimited(time.Second), llmtest.OK())

	cfg := openai.DefaultConfig("test")
	cfg.BaseURL = srv.URL
	client := openai.NewClientWithConfig(cfg)
	req := openai.ChatCompletionRequest{
		Model:    "gpt-4o",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hello"}},
	}

	_, err := client.CreateChatCompletion(context.Background(), req)
	var apiErr *openai.APIError
	if errors.As(err, &apiErr) {
		fmt.Println("first:", apiErr.HTTPStatusCode, apiErr.Code)
	}

	resp, err := client.CreateChatCompletion(context.Background(), req)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("second:", resp.Choices[0].Message.Content)
	fmt.Println("completed:", srv.Completed("hello"))
	// Output:
	// first: 429 rate_limit_exceeded
	// second: You said: hello
	// completed: 1
}

// Chaos makes a share of requests fail at random; with a seed the sequence
// of failures is the same on every run.
func ExampleWithChaos() {
	srv := llmtest.NewServer(
		llmtest.WithSeed(42),
		llmtest.WithChaos(llmtest.Chaos{ServerError: 0.3}),
	)
	defer srv.Close()

	cfg := openai.DefaultConfig("test")
	cfg.BaseURL = srv.URL
	client := openai.NewClientWithConfig(cfg)
	req := openai.ChatCompletionRequest{
		Model:    "gpt-4o",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hi"}},
	}
	for range 10 {
		_, _ = client.CreateChatCompletion(context.Background(), req)
	}
	st := srv.Stats()
	fmt.Println(st.Requests == st.Succeeded+st.Faults, st.Faults > 0, st.Succeeded > 0)
	// Output: true true true
}
