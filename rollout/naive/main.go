// Command naive is the control of the rolling-restart test in package
// rollout: the API of examples/server (POST /v1/generate, GET /readyz,
// GET /healthz) with the same llmdrain client, retries included, and none
// of the graceful shutdown. It installs no signal handler, so SIGTERM
// kills it on the spot, the way a service that never thought about
// shutdown dies; /readyz answers 200 until then.
//
// It exists to show, next to the real server behind the same load
// balancer, what draining buys. Nobody should deploy it.
//
// Configuration, from the environment: ADDR (default 127.0.0.1:8080),
// HOLYSHEEP_API_KEY and HOLYSHEEP_BASE_URL, read by llmdrain.New.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	openai "github.com/sashabaranov/go-openai"

	"github.com/llmdrain/llmdrain"
)

func main() {
	addr := os.Getenv("ADDR")
	if addr == "" {
		addr = "127.0.0.1:8080"
	}
	client, err := llmdrain.New(llmdrain.Config{})
	if err != nil {
		log.Fatal(err)
	}
	ok := func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") }
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /readyz", ok)
	mux.HandleFunc("POST /v1/generate", func(w http.ResponseWriter, r *http.Request) { generate(client, w, r) })
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("listening on %s", addr)
	log.Fatal(srv.ListenAndServe())
}

type text struct {
	Text string `json:"text"`
}

// generate answers like examples/server: {"text": ...}, or with "stream"
// the text as server-sent events ending in data: [DONE], an "event: error"
// instead when the upstream stream breaks.
func generate(client *llmdrain.Client, w http.ResponseWriter, r *http.Request) {
	var in struct {
		Prompt string `json:"prompt"`
		Stream bool   `json:"stream"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil || in.Prompt == "" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	req := openai.ChatCompletionRequest{
		Messages: []openai.ChatCompletionMessage{{Role: openai.ChatMessageRoleUser, Content: in.Prompt}},
		Stream:   in.Stream,
	}
	if !in.Stream {
		resp, err := client.CreateChatCompletion(r.Context(), req)
		if err != nil || len(resp.Choices) == 0 {
			http.Error(w, "the LLM call failed", http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(text{resp.Choices[0].Message.Content})
		return
	}
	st, err := client.CreateChatCompletionStream(r.Context(), req)
	if err != nil {
		http.Error(w, "the LLM call failed", http.StatusBadGateway)
		return
	}
	defer st.Close()
	w.Header().Set("Content-Type", "text/event-stream")
	rc := http.NewResponseController(w)
	for {
		chunk, err := st.Recv()
		if errors.Is(err, io.EOF) {
			fmt.Fprint(w, "data: [DONE]\n\n")
			_ = rc.Flush()
			return
		}
		if err != nil {
			fmt.Fprint(w, "event: error\ndata: {\"error\":\"stream cut off\"}\n\n")
			_ = rc.Flush()
			return
		}
		for _, c := range chunk.Choices {
			if c.Delta.Content != "" {
				b, _ := json.Marshal(text{c.Delta.Content})
				fmt.Fprintf(w, "data: %s\n\n", b)
			}
		}
		if rc.Flush() != nil {
			return
		}
	}
}
