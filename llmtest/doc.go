// Package llmtest provides an OpenAI-compatible fake LLM API server for tests
// and offline demos.
//
// It is to LLM clients what net/http/httptest is to HTTP handlers: NewServer
// starts a real server on a loopback port and Server.URL is handed to an
// OpenAI client as its base URL. Unlike httptest, the server also misbehaves
// on request — scripted faults (Server.Script) or seeded random ones
// (WithChaos) produce rate limits, server errors with OpenAI error codes,
// connection resets, hangs, truncated bodies, and the ways real streams go
// wrong (a slow first token, a stall, a malformed event, a missing
// "data: [DONE]") — so retry, failover and shutdown paths can be tested
// over real sockets, deterministically.
package llmtest
