package llmdrain

import (
	"context"
	"sync"
	"testing"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain/llmtest"
)

// drawCounter is a Quota that admits everything and counts the requests
// drawn, net of give-backs.
type drawCounter struct {
	mu       sync.Mutex
	requests int
}

func (d *drawCounter) Take(_ context.Context, _ string, _ Limit, requests, _ int) (time.Duration, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.requests += requests
	return 0, nil
}

// TestFirstWaveChargedToQuota: attempts sent before the target told its
// limit are drawn from the Quota once it has, so that a shared Quota, which
// starts full, knows what the fleet's first waves took from the provider.
func TestFirstWaveChargedToQuota(t *testing.T) {
	up := llmtest.NewServer(llmtest.WithRateLimit(llmtest.RateLimit{
		RequestsPerMinute: 1000, TokensPerMinute: 1_000_000, Headers: true,
	}), llmtest.WithLatency(20*time.Millisecond))
	defer up.Close()
	q := new(drawCounter)
	c, err := New(Config{APIKey: "sk-test-firstwave", BaseURL: up.URL, Quota: q})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown(context.Background())

	// The first wave: all sent before any answer has told the limit.
	const wave = 8
	var wg sync.WaitGroup
	for range wave {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.CreateChatCompletion(context.Background(), openai.ChatCompletionRequest{
				Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hello"}},
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// Then paced calls, each drawn before it is sent.
	for range 3 {
		if _, err := c.Chat(context.Background(), "hello"); err != nil {
			t.Fatal(err)
		}
	}
	if got, sent := q.requests, up.Stats().Requests; got != sent {
		t.Errorf("the Quota was drawn %d requests for %d the provider counted; want every answered attempt drawn, the first wave's too", got, sent)
	}
}
