package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain"
	"github.com/llmdrain/llmdrain/llmtest"
)

// TestDashboardReferencesExistingMetrics checks that every metric and
// label grafana-dashboard.json's queries use is in what /metrics serves
// once a client has done everything the dashboard shows: calls, streams,
// retries after a Retry-After, a target's ejection, a failed call, priced
// and unpriced answers, a budget refusal, a drain.
func TestDashboardReferencesExistingMetrics(t *testing.T) {
	exposed := exposition(t)
	queries := dashboardQueries(t)
	require.NotEmpty(t, queries)
	for _, q := range queries {
		metrics, labels := promqlNames(q)
		assert.NotEmpty(t, metrics, "a query of no llmdrain metric: %s", q)
		known := map[string]bool{"le": true, "instance": true, "job": true}
		for _, m := range metrics {
			l, ok := exposed[m]
			assert.True(t, ok, "%s is not exposed; query: %s", m, q)
			for k := range l {
				known[k] = true
			}
		}
		for _, l := range labels {
			assert.True(t, known[l], "label %s is on none of %v; query: %s", l, metrics, q)
		}
	}
}

// exposition runs a client through the metrics server and returns every
// series name /metrics serves, with the label names each has.
func exposition(t *testing.T) map[string]map[string]bool {
	t.Helper()
	primary := llmtest.NewServer(llmtest.WithAPIKey(testKey))
	t.Cleanup(primary.Close)
	fallback := llmtest.NewServer(llmtest.WithAPIKey(testKey))
	t.Cleanup(fallback.Close)
	m, err := startMetrics("127.0.0.1:0", slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, err)
	t.Cleanup(m.Close)
	prices := llmdrain.Prices{"gpt-4o": {Input: 2.5, Output: 10, MaxOutput: 16384}}
	client, err := llmdrain.New(llmdrain.Config{
		APIKey: testKey, BaseURL: primary.URL, FallbackURLs: []string{fallback.URL},
		FailoverAfter: 2, Cooldown: time.Hour, Hooks: m.Hooks,
		Backoff: func() backoff.BackOff { return &backoff.ZeroBackOff{} },
		Prices:  prices, MaxCost: 1,
	})
	require.NoError(t, err)
	ctx := context.Background()
	// Without a cap, a model without a price is called, at a cost not
	// known; with one, it is refused.
	uncapped, err := llmdrain.New(llmdrain.Config{APIKey: testKey, BaseURL: fallback.URL, Hooks: m.Hooks, Prices: prices})
	require.NoError(t, err)
	unpriced := openai.ChatCompletionRequest{
		Model:    "gpt-4o-mini",
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hello"}},
	}
	_, err = uncapped.CreateChatCompletion(ctx, unpriced)
	require.NoError(t, err)
	require.NoError(t, uncapped.Shutdown(ctx))
	_, err = client.CreateChatCompletion(ctx, unpriced)
	require.ErrorIs(t, err, llmdrain.ErrBudgetExceeded)
	chat := func() {
		t.Helper()
		_, err := client.CreateChatCompletion(ctx, openai.ChatCompletionRequest{
			Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "hello"}},
		})
		require.NoError(t, err)
	}
	primary.Script(llmtest.RateLimitedMS(5 * time.Millisecond))
	chat() // retried after the server's hint
	_, err = client.Chat(ctx, "a streamed answer")
	require.NoError(t, err)
	primary.Script(llmtest.Status(503), llmtest.Status(503))
	chat() // the primary ejected, the fallback answers
	fallback.Script(llmtest.Status(400))
	_, err = client.CreateChatCompletion(ctx, openai.ChatCompletionRequest{
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: "refused"}},
	})
	require.Error(t, err) // a failed call, with its error.type
	require.NoError(t, client.Shutdown(ctx))

	resp, err := http.Get("http://" + m.Addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	out := map[string]map[string]bool{}
	labelName := regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		if out[name] == nil {
			out[name] = map[string]bool{}
		}
		if labels, _, ok := strings.Cut(rest, "} "); ok {
			for _, m := range labelName.FindAllStringSubmatch(labels, -1) {
				out[name][m[1]] = true
			}
		}
	}
	require.NoError(t, sc.Err())
	return out
}

// dashboardQueries returns the PromQL of every panel's targets.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("grafana-dashboard.json")
	require.NoError(t, err)
	var d struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	require.NoError(t, json.Unmarshal(b, &d))
	var qs []string
	for _, p := range d.Panels {
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, tg := range p.Targets {
			require.NotEmpty(t, tg.Expr, "panel %q", p.Title)
			qs = append(qs, tg.Expr)
		}
	}
	return qs
}

var (
	grouping = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matchers = regexp.MustCompile(`\{([^}]*)\}`)
	matchKey = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	ident    = regexp.MustCompile(`\b(?:gen_ai|llmdrain)_[a-zA-Z0-9_]+\b`)
	legend   = regexp.MustCompile(`\$__\w+`)
)

// promqlNames returns the llmdrain and GenAI metric names a query uses
// and the label names it groups by or matches on.
func promqlNames(q string) (metrics, labels []string) {
	q = legend.ReplaceAllString(q, "1m")
	for _, m := range grouping.FindAllStringSubmatch(q, -1) {
		for _, l := range strings.Split(m[1], ",") {
			labels = append(labels, strings.TrimSpace(l))
		}
	}
	for _, m := range matchers.FindAllStringSubmatch(q, -1) {
		for _, k := range matchKey.FindAllStringSubmatch(m[1], -1) {
			labels = append(labels, k[1])
		}
	}
	rest := matchers.ReplaceAllString(grouping.ReplaceAllString(q, ""), "")
	metrics = ident.FindAllString(rest, -1)
	slices.Sort(metrics)
	return slices.Compact(metrics), labels
}
