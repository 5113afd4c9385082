package llmtest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// TestAzure: go-openai configured for Azure OpenAI gets answers at its
// deployment URLs, with its api-key header; a bearer token, a missing
// api-version or another path are refused as Azure refuses them.
func TestAzure(t *testing.T) {
	srv := llmtest.NewServer(llmtest.WithAzure(), llmtest.WithAPIKey("azure-key"))
	defer srv.Close()
	assert.NotContains(t, srv.URL, "/v1", "a resource's root")

	cfg := openai.DefaultAzureConfig("azure-key", srv.URL)
	cfg.APIVersion = "2024-10-21"
	c := openai.NewClientWithConfig(cfg)
	req := openai.ChatCompletionRequest{Model: "gpt-4o-mini", Messages: []openai.ChatCompletionMessage{{Role: "user", Content: "hi"}}}
	resp, err := c.CreateChatCompletion(context.Background(), req)
	require.NoError(t, err)
	assert.Equal(t, llmtest.Reply("hi"), resp.Choices[0].Message.Content)
	assert.Equal(t, "gpt-4o-mini", resp.Model, "the deployment answered")

	st, err := c.CreateChatCompletionStream(context.Background(), req)
	require.NoError(t, err)
	var text strings.Builder
	for {
		ch, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		text.WriteString(ch.Choices[0].Delta.Content)
	}
	st.Close()
	assert.Equal(t, llmtest.Reply("hi"), text.String())

	emb, err := c.CreateEmbeddings(context.Background(), openai.EmbeddingRequest{Model: "text-embedding-3-small", Input: "x"})
	require.NoError(t, err)
	assert.Len(t, emb.Data, 1)

	// The key as a bearer token, the OpenAI way, is not Azure's.
	bearer := openai.DefaultConfig("azure-key")
	bearer.BaseURL, bearer.APIType, bearer.APIVersion = srv.URL, openai.APITypeAzureAD, "2024-10-21"
	_, err = openai.NewClientWithConfig(bearer).CreateChatCompletion(context.Background(), req)
	var apiErr *openai.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, http.StatusUnauthorized, apiErr.HTTPStatusCode)
	assert.Contains(t, apiErr.Message, "Access denied")

	for _, path := range []string{"/openai/deployments/gpt-4o/chat/completions", "/v1/chat/completions?api-version=1"} {
		r, err := http.Post(srv.URL+path, "application/json", strings.NewReader(`{}`))
		require.NoError(t, err)
		r.Body.Close()
		assert.Equal(t, http.StatusNotFound, r.StatusCode, path)
	}
}
