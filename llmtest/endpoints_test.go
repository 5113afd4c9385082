package llmtest_test

import (
	"math"
	"net/http"
	"testing"

	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestListModels(t *testing.T) {
	srv := newServer(t)
	list, err := newClient(t, srv).ListModels(testContext(t))
	require.NoError(t, err)
	var ids []string
	for _, m := range list.Models {
		ids = append(ids, m.ID)
		assert.Equal(t, "model", m.Object)
	}
	assert.Contains(t, ids, "gpt-4o")
	assert.Equal(t, 1, srv.Stats().Other)
	assert.Equal(t, 0, srv.Stats().Requests)
}

func norm(v []float32) float64 {
	var sum float64
	for _, x := range v {
		sum += float64(x) * float64(x)
	}
	return math.Sqrt(sum)
}

func TestEmbeddings(t *testing.T) {
	srv := newServer(t)
	client := newClient(t, srv)
	ctx := testContext(t)

	resp, err := client.CreateEmbeddings(ctx, openai.EmbeddingRequest{
		Input: []string{"alpha", "beta gamma", "alpha"},
		Model: openai.SmallEmbedding3,
	})
	require.NoError(t, err)
	assert.Equal(t, "list", resp.Object)
	assert.Equal(t, openai.SmallEmbedding3, resp.Model)
	assert.Equal(t, 4, resp.Usage.PromptTokens, "words")
	require.Len(t, resp.Data, 3)
	for i, e := range resp.Data {
		assert.Equal(t, i, e.Index)
		assert.Equal(t, "embedding", e.Object)
		assert.Len(t, e.Embedding, 8)
		assert.InDelta(t, 1, norm(e.Embedding), 1e-5, "unit vectors")
	}
	assert.Equal(t, resp.Data[0].Embedding, resp.Data[2].Embedding, "same text, same vector")
	assert.NotEqual(t, resp.Data[0].Embedding, resp.Data[1].Embedding)

	again, err := client.CreateEmbeddings(ctx, openai.EmbeddingRequest{Input: "alpha", Dimensions: 8})
	require.NoError(t, err)
	assert.Equal(t, resp.Data[0].Embedding, again.Data[0].Embedding, "deterministic across requests")

	b64, err := client.CreateEmbeddings(ctx, openai.EmbeddingRequest{
		Input:          "alpha",
		EncodingFormat: openai.EmbeddingEncodingFormatBase64,
	})
	require.NoError(t, err)
	assert.Equal(t, resp.Data[0].Embedding, b64.Data[0].Embedding, "base64 carries the same vector")

	wide, err := client.CreateEmbeddings(ctx, openai.EmbeddingRequestTokens{
		Input:      [][]int{{1, 2, 3}, {4}},
		Dimensions: 32,
	})
	require.NoError(t, err)
	require.Len(t, wide.Data, 2)
	assert.Len(t, wide.Data[0].Embedding, 32)
	assert.Equal(t, 4, wide.Usage.PromptTokens)

	assert.Equal(t, 4, srv.Stats().Other)
}

func TestEmbeddingsBadInput(t *testing.T) {
	srv := newServer(t)
	c := newHTTPClient(t)
	for _, body := range []string{`{"input": `, `{"input": 42}`, `{"input": []}`, `{}`} {
		resp, err := doRequest(t, c, http.MethodPost, srv.URL+"/embeddings", body, nil)
		require.NoError(t, err)
		b, err := readAll(t, resp)
		require.NoError(t, err)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode, body)
		assert.Equal(t, "invalid_request_error", decodeError(t, b))
	}
}
