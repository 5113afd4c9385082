package llmtest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/llmdrain/llmdrain/llmtest"
)

// TestOfficialNodeSDK runs the official OpenAI Node SDK against the server
// (testdata/sdk/check.mjs): chat, streams with usage, embeddings, models,
// and the SDK's typed errors for the API's error answers
// (BadRequestError, NotFoundError, AuthenticationError). It needs node and
// `npm ci` in testdata/sdk, which .ci/run does; without them it is skipped,
// unless $CI is set.
func TestOfficialNodeSDK(t *testing.T) {
	dir := filepath.Join("testdata", "sdk")
	node, err := exec.LookPath("node")
	_, modErr := os.Stat(filepath.Join(dir, "node_modules", "openai"))
	if err != nil || modErr != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("node (%v) and the openai package (%v) are needed: run npm ci in %s", err, modErr, dir)
		}
		t.Skip("needs node and `npm ci` in llmtest/testdata/sdk")
	}
	const key = "sk-llmtest-sdk-0123456789abcdef"
	srv := newServer(t, llmtest.WithAPIKey(key))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "check.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LLMTEST_URL="+srv.URL, "LLMTEST_KEY="+key)
	out, err := cmd.CombinedOutput()
	t.Logf("node check.mjs:\n%s", out)
	if err != nil {
		t.Fatalf("the SDK's checks failed: %v", err)
	}
	if !strings.Contains(string(out), " passed, 0 failed") {
		t.Fatalf("no summary line")
	}
}
