package redisquota_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
	"github.com/llmdrain/llmdrain/redisquota"
	"github.com/llmdrain/llmdrain/redisquota/redistest"
	openai "github.com/sashabaranov/go-openai"
)

// chat makes n calls through c, conc at a time, and fails the test on any
// error.
func chat(t *testing.T, c *llmdrain.Client, n, conc int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan struct{}, n)
	for range n {
		next <- struct{}{}
	}
	close(next)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := c.CreateChatCompletion(ctx, openai.ChatCompletionRequest{
					Model:    "gpt-4o",
					Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hello"}},
				})
				cancel()
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("call failed: %v", err)
	}
}

// outageLine is redisquota's log line for an outage (llmdrain's own line
// quotes its error, which says "redisquota: redis unavailable" too).
const outageLine = "redisquota: redis unavailable; pacing locally"

// quotaKeys counts the bucket keys the Quota wrote in Redis.
func quotaKeys(t *testing.T, srv *redistest.Server) int {
	t.Helper()
	rdb := newClient(t, srv)
	keys, err := rdb.Keys(context.Background(), "*"+redisquota.DefaultPrefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	return len(keys)
}

// TestClientSurvivesRedisDeath runs a real llmdrain client through a
// redisquota against a metered llmtest provider while Redis dies and comes
// back: no call fails or waits on the dead Redis, the outage is logged
// once, and the quota is shared again once Redis answers.
func TestClientSurvivesRedisDeath(t *testing.T) {
	srv := redistest.New(t)
	up := llmtest.NewServer(llmtest.WithRateLimit(llmtest.RateLimit{
		RequestsPerMinute: 1000, TokensPerMinute: 100000, Period: time.Minute, Headers: true, Hints: true,
	}))
	defer up.Close()
	var logs logBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	// A Timeout well above a loaded machine's hiccups: a dead Redis refuses
	// at once whatever it is, and a spurious timeout would log an outage.
	q := newQuota(t, newClient(t, srv), redisquota.Options{Logger: logger, Timeout: time.Second, Cooldown: 50 * time.Millisecond})
	c, err := llmdrain.New(llmdrain.Config{APIKey: "sk-test-redisquota", BaseURL: up.URL, Model: "gpt-4o", Quota: q, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Shutdown(context.Background())

	chat(t, c, 20, 4)
	if n := quotaKeys(t, srv); n == 0 {
		t.Fatal("no bucket in Redis after 20 paced calls: the client did not draw from the Quota")
	}

	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	chat(t, c, 40, 4)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("40 calls with Redis dead took %v; want no call held on Redis (100 ms at most each)", d)
	}
	if got := logs.count(outageLine); got != 1 {
		t.Errorf("the outage was logged %d times by redisquota; want once:\n%s", got, logs.String())
	}

	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for logs.count("redis answers again") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Redis back for 10 s and the Quota has not used it:\n%s", logs.String())
		}
		chat(t, c, 4, 4)
	}
	chat(t, c, 10, 2)
	if n := quotaKeys(t, srv); n == 0 {
		t.Error("no bucket in the restarted Redis: the client did not share the quota again")
	}
	if got := logs.count(outageLine); got != 1 {
		t.Errorf("the outage was logged %d times in all; want once:\n%s", got, logs.String())
	}
	for _, secret := range []string{"sk-test-redisquota"} {
		if n := logs.count(secret); n > 0 {
			t.Errorf("the API key appears %d times in the logs", n)
		}
	}
}
