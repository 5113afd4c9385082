package llmtest

import (
	"slices"
	"strconv"
	"time"
)

// Stats is a snapshot of what a Server has seen since it started.
//
// Every chat completion request counts in Requests. It then ends in exactly
// one of three ways: Succeeded (the whole response was written), Faults (the
// server deliberately answered with anything but success: a scripted or
// chaos fault, a 401 or a 400 for a malformed body), or neither (the client
// went away or the server closed before a success was fully written).
type Stats struct {
	Requests    int // chat completion requests received, whatever their outcome
	Succeeded   int // chat responses written in full: 200 and, for streams, through data: [DONE]
	Streams     int // well-formed chat requests with "stream": true
	Faults      int // chat requests answered with a fault: anything but success
	InFlight    int // chat requests received whose outcome the client has not been sent yet
	MaxInFlight int // high-water mark of InFlight since the server started
	Other       int // requests to any path or method other than POST /v1/chat/completions
	RateLimited int // chat requests answered 429 by WithRateLimit's metering (counted in Faults too)

	// PromptTokens and CompletionTokens are the tokens billed for the
	// answers counted in Succeeded: the sums of their usage's
	// prompt_tokens and completion_tokens, whether or not a stream asked
	// for its usage event. A client's token metrics must add up to them.
	PromptTokens, CompletionTokens int
}

// Stats returns a consistent snapshot of the server's counters.
//
// The counters move just before the client can see an outcome: a request
// leaves InFlight, and a success is counted, right before the last bytes of
// its response are written (or its connection is closed). So once a client
// has its response or error, Stats already reflects it, and sequential
// requests never overlap in InFlight. Only a request the client abandons
// (by cancelling it) stays in flight until the server notices, shortly after.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Completed reports how many chat requests whose last user message was
// exactly prompt got a full successful response: status 200 with the whole
// body written, through "data: [DONE]" for streams. Faults, truncations and
// responses cut short by the client or by Close do not count.
//
// A success is counted just before the last bytes of its response are
// written and taken back if writing them fails, so once a client holds a
// complete response, Completed and Stats.Succeeded already include it.
func (s *Server) Completed(prompt string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.completed[prompt]
}

// chatStarted counts a chat request the moment its handler starts.
func (s *Server) chatStarted() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests++
	s.stats.InFlight++
	s.stats.MaxInFlight = max(s.stats.MaxInFlight, s.stats.InFlight)
}

func (s *Server) chatEnded() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.InFlight--
}

func (s *Server) countFault() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Faults++
}

func (s *Server) countOther() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Other++
}

// countSuccess records a success about to be delivered; the returned func
// takes it back if the delivery then fails.
func (s *Server) countSuccess(prompt string, u usage) (undo func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Succeeded++
	s.stats.PromptTokens += u.PromptTokens
	s.stats.CompletionTokens += u.CompletionTokens
	s.completed[prompt]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.stats.Succeeded--
		s.stats.PromptTokens -= u.PromptTokens
		s.stats.CompletionTokens -= u.CompletionTokens
		if s.completed[prompt]--; s.completed[prompt] == 0 {
			delete(s.completed, prompt)
		}
	}
}

// Exchange is one chat completion request as the server chose to answer it:
// the record History keeps, so a test can tell why a client gave up.
type Exchange struct {
	Received time.Time // when the request's body had been read
	// Status is the status the server answers with: 200 for a success (a
	// Truncate fault included, which starts as one), the fault's status,
	// or 0 when no response is written (Reset, Hang).
	Status int
	// Fault names the scripted or chaos fault, such as "status 429",
	// "reset", "hang" or "truncate"; empty for a normal answer.
	Fault string
	// RetryAfter is the retry hint sent with an error status, such as
	// "retry-after-ms: 50" or "Retry-After: 1"; empty when none was sent.
	RetryAfter string
}

// String renders the exchange as "429 (status 429, Retry-After: 1)" or
// "200".
func (e Exchange) String() string {
	s := strconv.Itoa(e.Status)
	switch {
	case e.Fault != "" && e.RetryAfter != "":
		s += " (" + e.Fault + ", " + e.RetryAfter + ")"
	case e.Fault != "":
		s += " (" + e.Fault + ")"
	}
	return s
}

// History returns, in arrival order, every well-formed, authorised chat
// completion request whose last user message was exactly prompt, with the
// answer the server chose for it. A client that gives up on a prompt can be
// explained from it: how many attempts it made, what each got, and how long
// it waited between them. Requests the server rejected by itself (401,
// 400, 413) are not recorded. Of a prompt sent more than HistoryLimit
// times, only the last HistoryLimit are kept, so that a server that runs
// long (a demo, a benchmark) does not grow without end; Stats and
// Completed count every request.
func (s *Server) History(prompt string) []Exchange {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := s.history[prompt]
	return slices.Clone(h[max(0, len(h)-HistoryLimit):])
}

// HistoryLimit is how many exchanges History keeps of each prompt: the
// last ones.
const HistoryLimit = 1000

// remember appends e to prompt's history. Past HistoryLimit the oldest are
// dropped, HistoryLimit at a time, so that an append stays O(1) on average
// and a prompt holds at most twice HistoryLimit. s.mu must be held.
func (s *Server) remember(prompt string, e Exchange) {
	h := append(s.history[prompt], e)
	if len(h) >= 2*HistoryLimit {
		n := copy(h, h[len(h)-HistoryLimit:])
		clear(h[n:]) // no strings kept alive past the end
		h = h[:n]
	}
	s.history[prompt] = h
}
