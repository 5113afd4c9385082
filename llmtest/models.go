package llmtest

import (
	"fmt"
	"net/http"
	"slices"
)

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

func newModel(id string) model {
	return model{ID: id, Object: "model", Created: modelsCreated, OwnedBy: "llmtest"}
}

// serveModels answers GET /v1/models with the models the server serves
// (DefaultModels unless WithModels set others).
func (s *Server) serveModels(w http.ResponseWriter, r *http.Request) {
	list := modelList{Object: "list"}
	for _, id := range s.listed() {
		list.Data = append(list.Data, newModel(id))
	}
	if !s.wait(r.Context(), 0) {
		abort(w, false)
		return
	}
	writeBody(w, http.StatusOK, "application/json", mustJSON(list), nil)
}

// serveModel answers GET /v1/models/{id}: the model, or the real API's 404
// with code "model_not_found" for a model it does not list.
func (s *Server) serveModel(w http.ResponseWriter, r *http.Request, id string) {
	if !s.wait(r.Context(), 0) {
		abort(w, false)
		return
	}
	if s.models != nil && !slices.Contains(s.models, id) {
		code := "model_not_found"
		msg := fmt.Sprintf("The model `%s` does not exist or you do not have access to it.", id)
		writeBody(w, http.StatusNotFound, "application/json",
			mustJSON(apiErrorBody{Error: apiError{Message: msg, Type: "invalid_request_error", Code: &code}}), nil)
		return
	}
	writeBody(w, http.StatusOK, "application/json", mustJSON(newModel(id)), nil)
}

// listed are the models GET /v1/models names.
func (s *Server) listed() []string {
	if s.models == nil {
		return DefaultModels
	}
	return s.models
}
