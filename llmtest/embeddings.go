package llmtest

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"strings"
)

const (
	defaultDimensions = 8
	maxDimensions     = 4096
)

type embeddingRequest struct {
	Input          json.RawMessage `json:"input"`
	Model          string          `json:"model"`
	EncodingFormat string          `json:"encoding_format"`
	Dimensions     int             `json:"dimensions"`
}

type embeddingList struct {
	Object string      `json:"object"`
	Data   []embedding `json:"data"`
	Model  string      `json:"model"`
	Usage  usage       `json:"usage"`
}

type embedding struct {
	Object    string `json:"object"`
	Embedding any    `json:"embedding"` // []float32, or a base64 string when asked for
	Index     int    `json:"index"`
}

// serveEmbeddings answers POST /v1/embeddings with one deterministic unit
// vector per input: the same text always embeds to the same vector, and
// different texts almost surely to different ones.
func (s *Server) serveEmbeddings(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if tooLarge(err) {
		s.respondAPIError(w, r, http.StatusRequestEntityTooLarge, "Request body too large.")
		return
	}
	if err != nil {
		return // the client went away mid-request: nobody to answer
	}
	if d := deployment(r); d != "" {
		body = withModel(body, d) // Azure: the deployment is the model
	}
	var req embeddingRequest
	if err := json.Unmarshal(body, &req); err != nil {
		s.respondAPIError(w, r, http.StatusBadRequest,
			"We could not parse the JSON body of your request: "+err.Error())
		return
	}
	inputs, tokens, ok := embeddingInputs(req.Input)
	if !ok {
		s.respondAPIError(w, r, http.StatusBadRequest,
			"'input' must be a string, an array of strings or an array of token arrays")
		return
	}
	dims := req.Dimensions
	if dims <= 0 || dims > maxDimensions {
		dims = defaultDimensions
	}

	resp := embeddingList{Object: "list", Model: req.Model, Usage: newUsage(tokens, 0)}
	for i, text := range inputs {
		vec := embed(text, dims)
		var value any = vec
		if req.EncodingFormat == "base64" {
			value = encodeFloats(vec)
		}
		resp.Data = append(resp.Data, embedding{Object: "embedding", Embedding: value, Index: i})
	}
	if !s.wait(r.Context(), 0) {
		abort(w, false)
		return
	}
	writeBody(w, http.StatusOK, "application/json", mustJSON(resp), nil)
}

// embeddingInputs accepts the four shapes OpenAI accepts for "input" and
// returns one text per input (token arrays are spelled out as numbers) and
// the number of prompt tokens, counted as words or tokens.
func embeddingInputs(raw json.RawMessage) (inputs []string, tokens int, ok bool) {
	var one string
	if json.Unmarshal(raw, &one) == nil {
		return []string{one}, len(strings.Fields(one)), true
	}
	var many []string
	if json.Unmarshal(raw, &many) == nil && len(many) > 0 {
		for _, s := range many {
			tokens += len(strings.Fields(s))
		}
		return many, tokens, true
	}
	var ids []int
	if json.Unmarshal(raw, &ids) == nil && len(ids) > 0 {
		return []string{fmt.Sprint(ids)}, len(ids), true
	}
	var idLists [][]int
	if json.Unmarshal(raw, &idLists) == nil && len(idLists) > 0 {
		for _, l := range idLists {
			inputs = append(inputs, fmt.Sprint(l))
			tokens += len(l)
		}
		return inputs, tokens, true
	}
	return nil, 0, false
}

// embed hashes text into a unit vector of dims components.
func embed(text string, dims int) []float32 {
	vec := make([]float32, dims)
	var norm float64
	for i := range vec {
		h := fnv.New64a()
		fmt.Fprintf(h, "%d\x00%s", i, text)
		x := float64(h.Sum64())/math.MaxUint64*2 - 1
		vec[i] = float32(x)
		norm += x * x
	}
	if norm > 0 {
		scale := 1 / math.Sqrt(norm)
		for i := range vec {
			vec[i] = float32(float64(vec[i]) * scale)
		}
	}
	return vec
}

// encodeFloats is the "base64" encoding format: little-endian float32s.
func encodeFloats(vec []float32) string {
	buf := make([]byte, 4*len(vec))
	for i, v := range vec {
		binary.LittleEndian.PutUint32(buf[4*i:], math.Float32bits(v))
	}
	return base64.StdEncoding.EncodeToString(buf)
}
