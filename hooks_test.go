package llmdrain

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// hookRecorder keeps every event its Hooks are told, in order.
type hookRecorder struct {
	mu       sync.Mutex
	starts   []CallStartInfo
	dones    []CallDoneInfo
	attempts []AttemptInfo
	waits    []WaitInfo
	changes  []TargetChangeInfo
	dstarts  []DrainStartInfo
	ddones   []DrainDoneInfo
	started  chan CallStartInfo // if not nil, told of each CallStart
}

func (r *hookRecorder) hooks() *Hooks {
	return &Hooks{
		CallStart: func(i CallStartInfo) {
			r.mu.Lock()
			r.starts = append(r.starts, i)
			ch := r.started
			r.mu.Unlock()
			if ch != nil {
				ch <- i
			}
		},
		CallDone:     func(i CallDoneInfo) { r.mu.Lock(); r.dones = append(r.dones, i); r.mu.Unlock() },
		AttemptDone:  func(i AttemptInfo) { r.mu.Lock(); r.attempts = append(r.attempts, i); r.mu.Unlock() },
		Waited:       func(i WaitInfo) { r.mu.Lock(); r.waits = append(r.waits, i); r.mu.Unlock() },
		TargetChange: func(i TargetChangeInfo) { r.mu.Lock(); r.changes = append(r.changes, i); r.mu.Unlock() },
		DrainStart:   func(i DrainStartInfo) { r.mu.Lock(); r.dstarts = append(r.dstarts, i); r.mu.Unlock() },
		DrainDone:    func(i DrainDoneInfo) { r.mu.Lock(); r.ddones = append(r.ddones, i); r.mu.Unlock() },
	}
}

// done returns the one CallDone told, failing the test if there is not
// exactly one.
func (r *hookRecorder) done(t *testing.T) CallDoneInfo {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	require.Len(t, r.starts, 1, "one CallStart")
	require.Len(t, r.dones, 1, "one CallDone")
	assert.Equal(t, r.starts[0], r.dones[0].CallStartInfo, "CallDone repeats CallStart")
	return r.dones[0]
}

func (r *hookRecorder) snapshot() hookRecorder {
	r.mu.Lock()
	defer r.mu.Unlock()
	return hookRecorder{starts: append([]CallStartInfo(nil), r.starts...), dones: append([]CallDoneInfo(nil), r.dones...),
		attempts: append([]AttemptInfo(nil), r.attempts...), waits: append([]WaitInfo(nil), r.waits...),
		changes: append([]TargetChangeInfo(nil), r.changes...), dstarts: append([]DrainStartInfo(nil), r.dstarts...),
		ddones: append([]DrainDoneInfo(nil), r.ddones...)}
}

func TestHooksPlainCall(t *testing.T) {
	srv := newServer(t)
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks()})
	resp, err := c.CreateChatCompletion(context.Background(), userMsg("count these five words"))
	require.NoError(t, err)

	d := rec.done(t)
	assert.Equal(t, CallStartInfo{Operation: OpChat, Model: DefaultModel, Target: srv.URL}, d.CallStartInfo)
	assert.Equal(t, srv.URL, d.Target)
	assert.NoError(t, d.Err)
	assert.Empty(t, d.ErrorType)
	assert.Equal(t, 1, d.Attempts)
	assert.Equal(t, resp.Model, d.ResponseModel)
	assert.Equal(t, Usage{InputTokens: resp.Usage.PromptTokens, OutputTokens: resp.Usage.CompletionTokens, Known: true}, d.Usage)
	assert.Positive(t, d.Usage.InputTokens)
	assert.Positive(t, d.Duration)
	assert.Zero(t, d.TimeToFirstChunk, "not a stream")

	ev := rec.snapshot()
	require.Len(t, ev.attempts, 1)
	a := ev.attempts[0]
	assert.Equal(t, AttemptInfo{Target: srv.URL, Attempt: 1, Status: 200, Outcome: "healthy", Duration: a.Duration}, a)
	assert.Positive(t, a.Duration)
	assert.LessOrEqual(t, a.Duration, d.Duration)
	assert.Empty(t, ev.waits)
}

func TestHooksOtherEndpoints(t *testing.T) {
	srv := newServer(t)
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks()})
	resp, err := c.OpenAI().CreateEmbeddings(context.Background(), openai.EmbeddingRequest{Input: []string{"one two three"}, Model: openai.SmallEmbedding3})
	require.NoError(t, err)
	d := rec.done(t)
	assert.Equal(t, OpEmbeddings, d.Operation)
	assert.Equal(t, string(openai.SmallEmbedding3), d.Model, "the model is not the body's first key")
	assert.Equal(t, Usage{InputTokens: resp.Usage.PromptTokens, Known: true}, d.Usage)

	_, err = c.OpenAI().ListModels(context.Background())
	require.NoError(t, err)
	ev := rec.snapshot()
	require.Len(t, ev.dones, 2)
	assert.Equal(t, CallStartInfo{Operation: OpOther, Target: srv.URL}, ev.dones[1].CallStartInfo)
	assert.False(t, ev.dones[1].Usage.Known)
}

func TestHooksRetries(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(503), llmtest.Reset(), llmtest.OK())
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks(),
		Backoff: func() backoff.BackOff { return backoff.NewConstantBackOff(5 * time.Millisecond) }})
	chat(t, c, "third time lucky")

	d := rec.done(t)
	assert.NoError(t, d.Err)
	assert.Equal(t, 3, d.Attempts)
	ev := rec.snapshot()
	require.Len(t, ev.attempts, 3)
	type brief struct {
		n             int
		status        int
		outcome, why  string
		retry, hasErr bool
	}
	var got []brief
	for _, a := range ev.attempts {
		got = append(got, brief{a.Attempt, a.Status, a.Outcome, a.Reason, a.Retry, a.Err != nil})
	}
	assert.Equal(t, []brief{
		{1, 503, "overloaded", "5xx", true, false},
		{2, 0, "broken", "connection", true, true},
		{3, 200, "healthy", "", false, false},
	}, got)
	require.Len(t, ev.waits, 2)
	for _, w := range ev.waits {
		assert.Equal(t, WaitBackoff, w.Reason)
		assert.Equal(t, srv.URL, w.Target)
		assert.GreaterOrEqual(t, w.Duration, 5*time.Millisecond)
	}
	assert.GreaterOrEqual(t, d.Duration, 10*time.Millisecond, "the waits are in the call")
}

func TestHooksRetriesExhausted(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(500), llmtest.Status(500))
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks(), MaxRetries: 1})
	_, err := c.CreateChatCompletion(context.Background(), userMsg("no luck"))
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)

	d := rec.done(t)
	assert.Equal(t, "500", d.ErrorType)
	assert.Error(t, d.Err)
	assert.Equal(t, 2, d.Attempts)
	ev := rec.snapshot()
	require.Len(t, ev.attempts, 2)
	assert.True(t, ev.attempts[0].Retry)
	assert.False(t, ev.attempts[1].Retry, "the last one")
	assert.Equal(t, "5xx", ev.attempts[1].Reason)
}

func TestHooksRetryAfterWait(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.RateLimitedMS(40 * time.Millisecond))
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks()}) // zero backoff: the hint is the wait
	chat(t, c, "rate limited")

	ev := rec.snapshot()
	require.Len(t, ev.attempts, 2)
	assert.Equal(t, "429", ev.attempts[0].Reason)
	assert.Equal(t, "overloaded", ev.attempts[0].Outcome)
	require.Len(t, ev.waits, 1)
	assert.Equal(t, WaitRetryAfter, ev.waits[0].Reason)
	assert.GreaterOrEqual(t, ev.waits[0].Duration, 40*time.Millisecond)
}

func TestHooksConcurrencyWait(t *testing.T) {
	srv := newServer(t, llmtest.WithChunkDelay(time.Hour))
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks(), MaxConcurrent: 1})
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("hold the slot"))
	require.NoError(t, err)
	defer s.Close()

	// The slot is held until s is closed: the second call waits until its
	// deadline.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = c.CreateChatCompletion(ctx, userMsg("wait for a slot"))
	require.ErrorIs(t, err, context.DeadlineExceeded)

	ev := rec.snapshot()
	require.Len(t, ev.waits, 1)
	assert.Equal(t, WaitInfo{Reason: WaitConcurrency, Duration: ev.waits[0].Duration}, ev.waits[0])
	assert.GreaterOrEqual(t, ev.waits[0].Duration, 40*time.Millisecond)
	require.Len(t, ev.dones, 1, "the stream is still open")
	assert.Equal(t, "timeout", ev.dones[0].ErrorType)
	assert.Zero(t, ev.dones[0].Attempts)
}

func TestHooksFailoverAndBreaker(t *testing.T) {
	var rec hookRecorder
	primary, fallback, c, cfg := twoTargets(t, Config{Hooks: rec.hooks()})
	clk := newManualClock()
	// Breakers on the test's clock, made as New makes them, OnChange
	// included.
	r, err := resolve(cfg)
	require.NoError(t, err)
	tr := c.http.Transport.(*transport)
	for i, tg := range newRouter(r, clk.now).targets {
		tr.router.targets[i].breaker = tg.breaker
	}
	pURL, fURL := primary.URL, fallback.URL
	primary.Script(repeat(llmtest.Status(503), 3)...)

	assert.Equal(t, "fallback-model", chat(t, c, "eject").Model)
	ev := rec.snapshot()
	require.Len(t, ev.attempts, 4)
	for i, a := range ev.attempts[:3] {
		assert.Equal(t, pURL, a.Target, i)
		assert.True(t, a.Retry, i)
	}
	assert.Equal(t, fURL, ev.attempts[3].Target)
	require.Len(t, ev.dones, 1)
	assert.Equal(t, fURL, ev.dones[0].Target, "the target that answered")
	assert.Equal(t, pURL, ev.dones[0].CallStartInfo.Target, "the first target")
	assert.Equal(t, "fallback-model", ev.dones[0].ResponseModel)
	assert.Equal(t, []TargetChangeInfo{{Target: pURL, From: TargetHealthy, To: TargetEjected, Ejections: 1, Cooldown: DefaultCooldown}}, ev.changes)

	clk.advance(DefaultCooldown) // a probe, which succeeds: the primary is back
	assert.Equal(t, "primary-model", chat(t, c, "probe").Model)
	ev = rec.snapshot()
	assert.Equal(t, []TargetChangeInfo{
		{Target: pURL, From: TargetHealthy, To: TargetEjected, Ejections: 1, Cooldown: DefaultCooldown},
		{Target: pURL, From: TargetEjected, To: TargetProbing, Ejections: 1},
		{Target: pURL, From: TargetProbing, To: TargetHealthy},
	}, ev.changes)
}

func TestHooksStreamUsageAndFirstChunk(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.FirstTokenDelay(30 * time.Millisecond))
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks()})
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("stream me four"))
	require.NoError(t, err)
	var text strings.Builder
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		// A caller that never asked for the usage event does not get it:
		// every chunk it reads has a choice.
		require.NotEmpty(t, r.Choices, "chunk %+v", r)
		assert.Nil(t, r.Usage)
		text.WriteString(r.Choices[0].Delta.Content)
	}
	require.NoError(t, s.Close())
	assert.Equal(t, llmtest.Reply("stream me four"), text.String())

	d := rec.done(t)
	assert.True(t, d.Stream)
	assert.NoError(t, d.Err)
	assert.True(t, d.Usage.Known, "asked for and read")
	assert.Equal(t, 3, d.Usage.InputTokens, "the server counts words")
	assert.Equal(t, len(strings.Fields(llmtest.Reply("stream me four"))), d.Usage.OutputTokens)
	assert.Equal(t, DefaultModel, d.ResponseModel)
	assert.GreaterOrEqual(t, d.TimeToFirstChunk, 30*time.Millisecond)
	assert.LessOrEqual(t, d.TimeToFirstChunk, d.Duration)
}

// TestHooksStreamCallerAskedForUsage: a caller that asked for the usage
// event gets it, and so do the hooks.
func TestHooksStreamCallerAskedForUsage(t *testing.T) {
	srv := newServer(t)
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks()})
	req := userMsg("usage please")
	req.StreamOptions = &openai.StreamOptions{IncludeUsage: true}
	s, err := c.CreateChatCompletionStream(context.Background(), req)
	require.NoError(t, err)
	defer s.Close()
	var usage *openai.Usage
	for {
		r, err := s.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		if r.Usage != nil {
			usage = r.Usage
		}
	}
	require.NotNil(t, usage, "the caller's usage event reached it")
	d := rec.done(t)
	assert.Equal(t, Usage{InputTokens: usage.PromptTokens, OutputTokens: usage.CompletionTokens, Known: true}, d.Usage)
}

func TestHooksChat(t *testing.T) {
	srv := newServer(t)
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks()})
	text, err := c.Chat(context.Background(), "one two")
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("one two"), text)
	d := rec.done(t)
	assert.True(t, d.Stream)
	assert.Equal(t, Usage{InputTokens: 2, OutputTokens: len(strings.Fields(text)), Known: true}, d.Usage)
}

// TestHooksStreamOptionsOnlyWithHooks: the request body asks for the usage
// event only with Hooks, only on chat streams, and never against the
// caller's own stream_options.
func TestHooksStreamOptionsOnlyWithHooks(t *testing.T) {
	srv := newServer(t)
	var (
		mu     sync.Mutex
		bodies []string
	)
	capture := &http.Client{Transport: roundTripFunc(func(req *http.Request) (*http.Response, error) {
		if req.Body != nil {
			b, err := io.ReadAll(req.Body)
			if err != nil {
				return nil, err
			}
			req.Body.Close()
			mu.Lock()
			bodies = append(bodies, string(b))
			mu.Unlock()
			req.Body = io.NopCloser(bytes.NewReader(b))
		}
		return http.DefaultTransport.RoundTrip(req)
	})}
	stream := func(c *Client, req openai.ChatCompletionRequest) string {
		t.Helper()
		s, err := c.CreateChatCompletionStream(context.Background(), req)
		require.NoError(t, err)
		_, err = readStream(s)
		require.NoError(t, err)
		s.Close()
		mu.Lock()
		defer mu.Unlock()
		return bodies[len(bodies)-1]
	}
	var rec hookRecorder
	with := newTestClient(t, srv, Config{Hooks: rec.hooks(), HTTPClient: capture})
	without := newTestClient(t, srv, Config{HTTPClient: capture})

	assert.Contains(t, stream(with, userMsg("a")), `"stream_options":{"include_usage":true}`)
	assert.NotContains(t, stream(without, userMsg("b")), "stream_options")
	own := userMsg("c")
	own.StreamOptions = &openai.StreamOptions{IncludeUsage: false}
	assert.Contains(t, stream(with, own), `"stream_options":{}`, "the caller's choice stands")
	_, err := with.CreateChatCompletion(context.Background(), userMsg("d"))
	require.NoError(t, err)
	mu.Lock()
	assert.NotContains(t, bodies[len(bodies)-1], "stream_options", "not on a plain call")
	mu.Unlock()
	ev := rec.snapshot()
	require.Len(t, ev.dones, 3)
	assert.False(t, ev.dones[1].Usage.Known, "the caller asked for none")
}

func TestHooksDrainWithForcedStraggler(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Hang())
	tr := NewTracker()
	var recA, recB hookRecorder
	a := newTestClient(t, srv, Config{Hooks: recA.hooks(), Tracker: tr})
	hb := recB.hooks()
	newTestClient(t, srv, Config{Hooks: hb, Tracker: tr})
	newTestClient(t, srv, Config{Hooks: hb, Tracker: tr}) // the same Hooks: told once

	errc := make(chan error, 1)
	go func() {
		_, err := a.CreateChatCompletion(context.Background(), userMsg("hang"))
		errc <- err
	}()
	waitInFlight(t, srv, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := a.Shutdown(ctx)
	var fe *ForcedDrainError
	require.ErrorAs(t, err, &fe)
	require.ErrorIs(t, <-errc, ErrForcedShutdown)

	for _, rec := range []*hookRecorder{&recA, &recB} {
		ev := rec.snapshot()
		assert.Equal(t, []DrainStartInfo{{InFlight: 1}}, ev.dstarts)
		require.Len(t, ev.ddones, 1)
		dd := ev.ddones[0]
		assert.Equal(t, err, dd.Err)
		assert.Equal(t, fe.Stragglers, dd.Forced)
		require.Len(t, dd.Forced, 1)
		assert.Equal(t, "POST /v1/chat/completions", dd.Forced[0].Label)
		assert.GreaterOrEqual(t, dd.Duration, 40*time.Millisecond, "the drain waited until its deadline")
	}
	d := recA.done(t)
	assert.Equal(t, "forced_shutdown", d.ErrorType)
	assert.ErrorIs(t, d.Err, ErrForcedShutdown)
	ev := recA.snapshot()
	require.Len(t, ev.attempts, 1)
	assert.Equal(t, "abandoned", ev.attempts[0].Outcome)
	assert.Equal(t, "forced_shutdown", ev.attempts[0].Reason)

	// A later drain tells nothing more; a refused call is told.
	require.Error(t, tr.Drain(context.Background()))
	_, err = a.CreateChatCompletion(context.Background(), userMsg("refused"))
	require.ErrorIs(t, err, ErrDraining)
	_, err = a.Chat(context.Background(), "refused too")
	require.ErrorIs(t, err, ErrDraining)
	ev = recA.snapshot()
	assert.Len(t, ev.ddones, 1)
	require.Len(t, ev.dones, 3)
	for _, d := range ev.dones[1:] {
		assert.Equal(t, "draining", d.ErrorType)
		assert.Zero(t, d.Attempts)
		assert.Empty(t, d.Target)
	}
	assert.Equal(t, ev.starts[1:], []CallStartInfo{ev.dones[1].CallStartInfo, ev.dones[2].CallStartInfo})
}

func TestHooksCleanDrain(t *testing.T) {
	srv := newServer(t)
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks()})
	chat(t, c, "before")
	require.NoError(t, c.Shutdown(context.Background()))
	ev := rec.snapshot()
	assert.Equal(t, []DrainStartInfo{{InFlight: 0}}, ev.dstarts)
	require.Len(t, ev.ddones, 1)
	assert.NoError(t, ev.ddones[0].Err)
	assert.Empty(t, ev.ddones[0].Forced)
}

func TestHooksStreamErrors(t *testing.T) {
	srv := newServer(t)
	var rec hookRecorder
	c := newTestClient(t, srv, Config{Hooks: rec.hooks(), StreamIdleTimeout: 50 * time.Millisecond})

	srv.Script(llmtest.Truncate(1))
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("cut me off here"))
	require.NoError(t, err)
	_, err = readStream(s)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	s.Close()

	srv.Script(llmtest.Stall(1))
	s, err = c.CreateChatCompletionStream(context.Background(), userMsg("stall me here"))
	require.NoError(t, err)
	_, err = readStream(s)
	require.ErrorIs(t, err, ErrStreamStalled)
	s.Close()

	ctx, cancel := context.WithCancel(context.Background())
	srv.Script(llmtest.Hang())
	go func() {
		waitInFlight(t, srv, 1)
		cancel()
	}()
	_, err = c.CreateChatCompletion(ctx, userMsg("cancel me"))
	require.ErrorIs(t, err, context.Canceled)

	ev := rec.snapshot()
	require.Len(t, ev.dones, 3)
	assert.Equal(t, "stream_cut", ev.dones[0].ErrorType)
	assert.Equal(t, "stream_stalled", ev.dones[1].ErrorType)
	assert.Equal(t, "canceled", ev.dones[2].ErrorType)
	for _, d := range ev.dones {
		assert.Error(t, d.Err)
	}
}

// TestHooksEmpty: Hooks with no function set change nothing.
func TestHooksEmpty(t *testing.T) {
	srv := newServer(t)
	srv.Script(llmtest.Status(503))
	c := newTestClient(t, srv, Config{Hooks: &Hooks{}, MaxConcurrent: 1, Fallbacks: []Target{{}}})
	chat(t, c, "nothing to tell")
	s, err := c.CreateChatCompletionStream(context.Background(), userMsg("stream"))
	require.NoError(t, err)
	_, err = readStream(s)
	require.NoError(t, err)
	s.Close()
	require.NoError(t, c.Shutdown(context.Background()))
}

func TestErrorType(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{&statusError{code: 429}, "429"},
		{ErrDraining, "draining"},
		{callError(canceledWith(ErrForcedShutdown), context.Canceled), "forced_shutdown"},
		{ErrStreamStalled, "stream_stalled"},
		{ErrMalformedEvent, "malformed_event"},
		{errTruncated, "stream_cut"},
		{&RetryError{Attempts: 2, Err: newTimeoutError(errAttemptTimeout, time.Second, waitHeaders, errAttemptTimeout)}, "timeout"},
		{&RetryError{Attempts: 2, Err: errors.New("dial tcp: refused")}, "connection"},
		{&openai.APIError{HTTPStatusCode: 200}, "api_error"},
		{&openai.APIError{HTTPStatusCode: 404}, "404"},
		{errors.New("what"), "other"},
	} {
		assert.Equal(t, tc.want, errorType(tc.err), "%v", tc.err)
	}
}

func canceledWith(cause error) context.Context {
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(cause)
	return ctx
}

func TestReadAnswer(t *testing.T) {
	var o callObs
	o.readAnswer([]byte(`{"id":"x","choices":[{"message":{"content":"the \"model\": \"no\", \"usage\": {}"}}],"model":"gpt-4o-2024-08-06",` +
		`"usage":{"prompt_tokens":10,"completion_tokens":3,"total_tokens":13,"prompt_tokens_details":{"cached_tokens":8}},"system_fingerprint":"fp"}`))
	assert.Equal(t, "gpt-4o-2024-08-06", o.respModel)
	assert.Equal(t, Usage{InputTokens: 10, CachedInputTokens: 8, OutputTokens: 3, Known: true}, o.usage)

	o = callObs{}
	o.readAnswer([]byte(`{"model":"m","usage":{"prompt_tokens":1,"completion_tokens":2,"note":"a\"b"}}`))
	assert.Equal(t, Usage{InputTokens: 1, OutputTokens: 2, Known: true}, o.usage, "the decoder's way")

	o = callObs{}
	o.readAnswer([]byte(`{"usage":null,"model":"m"}`))
	assert.False(t, o.usage.Known)
	assert.Equal(t, "m", o.respModel)
}

// TestKeyAtFindsFirstAndLastUnescaped checks keyAt against a direct
// reading of its contract on random documents made of the key, its
// escaped form, spaces and other bytes: the index past the first (or the
// last) occurrence not preceded by a backslash, spaces skipped.
func TestKeyAtFindsFirstAndLastUnescaped(t *testing.T) {
	const key = `"usage":`
	parts := []string{key, `\` + key, " ", "\n", "x", `"`, `\\`, "{", "usage", `"usage"`}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		var b []byte
		for range rng.IntN(12) {
			b = append(b, parts[rng.IntN(len(parts))]...)
		}
		for _, last := range []bool{false, true} {
			want := -1
			for i := 0; i+len(key) <= len(b); i++ {
				if string(b[i:i+len(key)]) != key || i > 0 && b[i-1] == '\\' {
					continue
				}
				want = i + len(key)
				if !last {
					break
				}
			}
			if want >= 0 {
				want = skipJSONSpace(b, want)
			}
			if got := keyAt(b, key, last); got != want {
				t.Fatalf("keyAt(%q, last=%v) = %d, want %d", b, last, got, want)
			}
		}
	}
}

func TestRequestModelAndIncludeUsage(t *testing.T) {
	assert.Equal(t, "gpt-4o", requestModel([]byte(`{"model":"gpt-4o","messages":[]}`), ""))
	assert.Equal(t, "gpt-4o", requestModel([]byte(`{"model":"gpt-4o","messages":[]}`), "gpt-4o"))
	assert.Equal(t, "e", requestModel([]byte(`{"input":"\"model\":\"no\"","model":"e"}`), ""))
	assert.Equal(t, "m\"x", requestModel([]byte(`{"model":"m\"x"}`), ""), "escapes, decoded")
	assert.Equal(t, "", requestModel([]byte(`{"input":"x"}`), ""))

	assert.Equal(t, `{"model":"m","stream":true,"stream_options":{"include_usage":true}}`,
		string(includeUsage([]byte(`{"model":"m","stream":true}`))))
	assert.Equal(t, `{"stream_options":{"include_usage":true}}`, string(includeUsage([]byte(`{}`))))
	assert.Nil(t, includeUsage([]byte(`{"stream_options":{"include_usage":false}}`)))
	assert.Nil(t, includeUsage([]byte(`{"model":`)), "no JSON object")
}

// TestUsageBodyChunked reads a stream through usageBody in reads of every
// size: the usage event is read and, with strip, taken out, the rest
// passed on byte for byte.
func TestUsageBodyChunked(t *testing.T) {
	const (
		first = `data: {"id":"1","model":"gpt-4o-x","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}` + "\n\n"
		usage = `data: {"id":"1","model":"gpt-4o-x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}` + "\n\n"
		done  = "data: [DONE]\n\n"
	)
	in := ": keep-alive\n\n" + first + usage + done
	for _, strip := range []bool{false, true} {
		for size := 1; size <= len(in); size++ {
			o := &callObs{}
			u := &usageBody{rc: io.NopCloser(&chunkReader{b: []byte(in), n: size}), o: o, strip: strip}
			out, err := io.ReadAll(u)
			require.NoError(t, err)
			want := in
			if strip {
				want = ": keep-alive\n\n" + first + "\n" + done
			}
			require.Equal(t, want, string(out), "size %d strip %v", size, strip)
			require.Equal(t, Usage{InputTokens: 7, OutputTokens: 2, Known: true}, o.usage)
			require.Equal(t, "gpt-4o-x", o.respModel)
		}
	}
}

// TestHookPanicReleasesCall: a panicking hook is the caller's bug, and
// panics in the caller's goroutine, but the call is released all the same.
func TestHookPanicReleasesCall(t *testing.T) {
	srv := newServer(t)
	for _, h := range []*Hooks{
		{AttemptDone: func(AttemptInfo) { panic("hook bug") }},
		{CallDone: func(CallDoneInfo) { panic("hook bug") }},
	} {
		c := newTestClient(t, srv, Config{Hooks: h, MaxConcurrent: 1})
		assert.PanicsWithValue(t, "hook bug", func() {
			_, _ = c.CreateChatCompletion(context.Background(), userMsg("x"))
		})
		assert.Equal(t, 0, c.Tracker().InFlight())
		require.NoError(t, c.Shutdown(context.Background()))
	}
}
