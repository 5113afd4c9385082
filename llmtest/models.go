package llmtest

import "net/http"

// modelsCreated is a fixed timestamp so the model list is the same bytes on
// every run.
const modelsCreated = 1715367049

type modelList struct {
	Object string  `json:"object"`
	Data   []model `json:"data"`
}

type model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// serveModels answers GET /v1/models with a short fixed list that includes
// "gpt-4o".
func (s *Server) serveModels(w http.ResponseWriter, r *http.Request) {
	list := modelList{Object: "list"}
	for _, id := range []string{"gpt-4o", "gpt-4o-mini", "text-embedding-3-small"} {
		list.Data = append(list.Data, model{ID: id, Object: "model", Created: modelsCreated, OwnedBy: "llmtest"})
	}
	if !s.wait(r.Context(), 0) {
		abort(w, false)
		return
	}
	writeBody(w, http.StatusOK, "application/json", mustJSON(list), nil)
}
