package redisquota_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/redisquota"
	"github.com/llmdrain/llmdrain/redisquota/redistest"
	"github.com/redis/go-redis/v9"
)

// newClient returns a go-redis client for srv with its default options
// (ContextTimeoutEnabled off: the Quota must bound its calls itself).
func newClient(t *testing.T, srv *redistest.Server) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

func newQuota(t *testing.T, rdb redis.UniversalClient, opts redisquota.Options) *redisquota.Quota {
	t.Helper()
	q, err := redisquota.New(rdb, opts)
	if err != nil {
		t.Fatal(err)
	}
	return q
}

// logBuffer is a slog destination tests can count lines in.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func take(t *testing.T, q *redisquota.Quota, key string, lim llmdrain.Limit, requests, tokens int) time.Duration {
	t.Helper()
	w, err := q.Take(context.Background(), key, lim, requests, tokens)
	if err != nil {
		t.Fatalf("Take(%d, %d): %v", requests, tokens, err)
	}
	return w
}

// drain draws from qs in turn until one refuses, and returns how many
// draws were admitted and the wait the refusal named.
func drain(t *testing.T, qs []*redisquota.Quota, key string, lim llmdrain.Limit, requests, tokens int) (int, time.Duration) {
	t.Helper()
	for n := 0; n < 1000; n++ {
		if w := take(t, qs[n%len(qs)], key, lim, requests, tokens); w > 0 {
			return n, w
		}
	}
	t.Fatal("no draw refused in 1000")
	return 0, 0
}

// A minute-long period keeps refill out of the counts: one request is
// 6 s of it, one token 60 ms.
var testLimit = llmdrain.Limit{Requests: 10, Tokens: 1000, Period: time.Minute}

func TestSharedBucketAcrossClients(t *testing.T) {
	srv := redistest.New(t)
	a := newQuota(t, newClient(t, srv), redisquota.Options{})
	b := newQuota(t, newClient(t, srv), redisquota.Options{})
	qs := []*redisquota.Quota{a, b}

	// Tokens run out first: 6 draws of 150 out of 1000, the two Quotas
	// (two connections, as two replicas) drawing from one bucket.
	n, w := drain(t, qs, "k1", testLimit, 1, 150)
	if n != 6 {
		t.Fatalf("admitted %d draws of 150 tokens from a 1000-token bucket through two Quotas; want 6", n)
	}
	// 900 of 1000 tokens drawn: 50 more tokens (3 s) before 150 fit.
	if w < 2*time.Second || w > 4*time.Second {
		t.Errorf("wait after the tokens ran out = %v; want about 3s", w)
	}
	// The refused draw gave its request back: 4 of 10 are left.
	n, w = drain(t, qs, "k1", testLimit, 1, 0)
	if n != 4 {
		t.Fatalf("admitted %d more requests; want 4 (10 less the 6 drawn with tokens)", n)
	}
	if w < 5*time.Second || w > 7*time.Second {
		t.Errorf("wait after the requests ran out = %v; want about 6s (one request's share of a minute)", w)
	}

	// Another key is another bucket.
	if n, _ := drain(t, qs, "k2", testLimit, 1, 0); n != 10 {
		t.Errorf("admitted %d requests on a fresh key; want 10", n)
	}
	// An axis the limit leaves at 0 is unlimited.
	if n, _ := drain(t, qs, "k3", llmdrain.Limit{Tokens: 1000, Period: time.Minute}, 5, 100); n != 10 {
		t.Errorf("admitted %d draws with no request limit; want 10, by tokens alone", n)
	}
}

func TestGiveBackAndOversizedDraw(t *testing.T) {
	srv := redistest.New(t)
	q := newQuota(t, newClient(t, srv), redisquota.Options{})
	qs := []*redisquota.Quota{q}

	if n, _ := drain(t, qs, "k", testLimit, 0, 250); n != 4 {
		t.Fatalf("admitted %d draws of 250 tokens; want 4", n)
	}
	// Usage came back lower than two estimates: 300 tokens returned.
	if w := take(t, q, "k", testLimit, 0, -300); w != 0 {
		t.Fatalf("give-back returned %v; want 0", w)
	}
	if n, _ := drain(t, qs, "k", testLimit, 0, 100); n != 3 {
		t.Errorf("admitted %d draws of 100 after giving back 300; want 3", n)
	}

	// A draw larger than the bucket waits for a full bucket, not for ever.
	if w := take(t, q, "big", testLimit, 0, 5000); w != 0 {
		t.Fatalf("oversized draw on a full bucket waited %v; want admitted", w)
	}
	if w := take(t, q, "big", testLimit, 0, 5000); w < 50*time.Second || w > 61*time.Second {
		t.Errorf("second oversized draw waits %v; want about a minute, the bucket's refill", w)
	}
}

func TestRedisKilledMidRun(t *testing.T) {
	srv := redistest.New(t)
	var logs logBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	opts := redisquota.Options{Logger: logger, Cooldown: 100 * time.Millisecond}
	a := newQuota(t, newClient(t, srv), opts)
	b := newQuota(t, newClient(t, srv), opts)
	qs := []*redisquota.Quota{a, b}

	if n, _ := drain(t, qs, "k", testLimit, 1, 0); n != 10 {
		t.Fatalf("admitted %d before the kill; want 10", n)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}

	// Every Take fails fast with ErrUnavailable, concurrently too, and
	// the outage is logged once per Quota however many calls see it.
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	start := time.Now()
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Another key: "k"'s refusal is remembered, and answered
			// without Redis until it expires.
			_, err := qs[i%2].Take(context.Background(), "k-after", testLimit, 1, 0)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("100 Takes against a dead Redis took %v; want each bounded by Timeout (100ms)", d)
	}
	for err := range errs {
		if !errors.Is(err, redisquota.ErrUnavailable) {
			t.Fatalf("Take with Redis dead: %v; want ErrUnavailable", err)
		}
	}
	if got := logs.count("redis unavailable"); got != 2 {
		t.Errorf("outage logged %d times by two Quotas; want 2 (once each):\n%s", got, logs.String())
	}

	// Back, and empty (nothing persisted): the shared bucket starts full
	// and both Quotas draw from it again once their cooldown has passed.
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	for _, q := range qs {
		waitUp(t, q)
	}
	if got := logs.count("redis answers again"); got != 2 {
		t.Errorf("recovery logged %d times by two Quotas; want 2:\n%s", got, logs.String())
	}
	if n, _ := drain(t, qs, "k2", testLimit, 1, 0); n != 10 {
		t.Errorf("admitted %d through two Quotas after the restart; want 10: shared again", n)
	}
	if got := logs.count("redis unavailable"); got != 2 {
		t.Errorf("outage logged %d times in all; want still 2:\n%s", got, logs.String())
	}
}

// waitUp asks q until Redis answers it, as calls do after the cooldown.
func waitUp(t *testing.T, q *redisquota.Quota) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := q.Take(context.Background(), "probe", testLimit, 0, 0)
		if err == nil {
			return
		}
		if !errors.Is(err, redisquota.ErrUnavailable) {
			t.Fatalf("Take while Redis comes back: %v; want nil or ErrUnavailable", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Redis restarted but Take still fails after 10s: %v", err)
		}
		<-tick.C
	}
}

func TestHungRedisBounded(t *testing.T) {
	srv := redistest.New(t)
	rdb := newClient(t, srv) // ReadTimeout 3s, ContextTimeoutEnabled off
	q := newQuota(t, rdb, redisquota.Options{Timeout: 50 * time.Millisecond, Cooldown: time.Hour})
	take(t, q, "k", testLimit, 1, 0) // the connection is open before the hang

	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			srv.Resume()
		}
	}()
	// Twenty callers at once: one holds the key's turn on the hung Redis,
	// the others wait for it, and every one is answered within about
	// Timeout, not the client's ReadTimeout (3 s) nor twenty Timeouts.
	start := time.Now()
	errs := make(chan error, 20)
	for range 20 {
		go func() {
			_, err := q.Take(context.Background(), "k", testLimit, 1, 0)
			errs <- err
		}()
	}
	sawDeadline := false
	for range 20 {
		err := <-errs
		if !errors.Is(err, redisquota.ErrUnavailable) {
			t.Fatalf("Take against a hung Redis: %v; want ErrUnavailable", err)
		}
		sawDeadline = sawDeadline || errors.Is(err, context.DeadlineExceeded)
	}
	if !sawDeadline {
		t.Error("no Take's error wraps the deadline that found Redis hung")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("20 Takes against a hung Redis took %v; want about Timeout (50ms)", d)
	}
	// Within the cooldown nothing waits on Redis at all.
	start = time.Now()
	for range 1000 {
		if _, err := q.Take(context.Background(), "k", testLimit, 1, 0); !errors.Is(err, redisquota.ErrUnavailable) {
			t.Fatalf("Take in the cooldown: %v; want ErrUnavailable", err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("1000 Takes in the cooldown took %v; want no Redis round trip", d)
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
}

func TestCallerCancelIsNotAnOutage(t *testing.T) {
	srv := redistest.New(t)
	var logs logBuffer
	q := newQuota(t, newClient(t, srv), redisquota.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := q.Take(ctx, "k", testLimit, 1, 0); !errors.Is(err, context.Canceled) || errors.Is(err, redisquota.ErrUnavailable) {
		t.Fatalf("Take with a cancelled context: %v; want context.Canceled, not ErrUnavailable", err)
	}
	take(t, q, "k", testLimit, 1, 0)
	if logs.count("unavailable") != 0 {
		t.Errorf("a caller's cancel was logged as an outage:\n%s", logs.String())
	}
}

func TestNewValidates(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer rdb.Close()
	for _, tc := range []struct {
		name  string
		rdb   redis.UniversalClient
		opts  redisquota.Options
		field string
	}{
		{"nil client", nil, redisquota.Options{}, "nil redis client"},
		{"negative timeout", rdb, redisquota.Options{Timeout: -1}, "Options.Timeout"},
		{"negative cooldown", rdb, redisquota.Options{Cooldown: -1}, "Options.Cooldown"},
	} {
		q, err := redisquota.New(tc.rdb, tc.opts)
		if err == nil || q != nil || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: New = %v, %v; want an error naming %q", tc.name, q, err, tc.field)
		}
	}
	if _, err := redisquota.New(rdb, redisquota.Options{}); err != nil {
		t.Errorf("New with zero Options: %v", err)
	}
}

// TestRefusalRemembered: callers of one process waiting on an empty bucket
// ask Redis once between them, not once each.
func TestRefusalRemembered(t *testing.T) {
	srv := redistest.New(t)
	rdb := newClient(t, srv)
	q := newQuota(t, rdb, redisquota.Options{})
	if n, _ := drain(t, []*redisquota.Quota{q}, "k", testLimit, 1, 0); n != 10 {
		t.Fatalf("admitted %d; want 10", n)
	}
	before := commandsProcessed(t, rdb)
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if w, err := q.Take(context.Background(), "k", testLimit, 1, 0); err != nil || w < 5*time.Second {
				t.Errorf("Take on an empty bucket = %v, %v; want a wait of about 6s", w, err)
			}
		}()
	}
	wg.Wait()
	// INFO itself counts one command; a refused Take that asked Redis
	// would count at least one EVALSHA.
	if n := commandsProcessed(t, rdb) - before; n > 1 {
		t.Errorf("50 refused Takes ran %d commands in Redis; want none (the refusal is remembered)", n-1)
	}
	// A give-back forgets the refusal: what was refused may fit now.
	take(t, q, "k", testLimit, -1, 0)
	if w := take(t, q, "k", testLimit, 1, 0); w != 0 {
		t.Errorf("Take after a give-back waited %v; want admitted", w)
	}
}

func commandsProcessed(t *testing.T, rdb *redis.Client) int {
	t.Helper()
	info, err := rdb.Info(context.Background(), "stats").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "total_commands_processed:"); ok {
			var n int
			fmt.Sscan(v, &n)
			return n
		}
	}
	t.Fatal("no total_commands_processed in INFO")
	return 0
}
