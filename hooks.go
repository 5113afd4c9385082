package llmdrain

import (
	"time"
)

// Hooks are optional functions told what a Client's calls do: each call's
// start and end, its attempts, its waits, its targets' ejections and
// returns, and the drains of its Tracker. They are in the spirit of
// net/http/httptrace.ClientTrace: a nil Hooks, or a nil field, is off and
// costs nothing. Set them with Config.Hooks; metrics (the otelmetrics
// module) and cost accounting are built on them.
//
// Hooks run synchronously, in the order a call's events happen: on the
// goroutine that made the call, or, for CallDone, the one that read its
// body to the end or closed it; TargetChange on the goroutine of the
// attempt that moved the target; DrainStart and DrainDone on the one that
// called Drain (or Shutdown). They must be fast and must not block: a
// slow hook slows every call, and one that blocks holds its call, and any
// drain waiting for it. They are called concurrently for different calls,
// so must be safe for concurrent use. A hook must not panic: a panicking
// hook is a bug of its own, which llmdrain does not recover (the panic
// reaches the caller of the method that ran it), though the call it
// panicked in is still released. The Info values are the hook's to keep;
// none holds an API key.
//
// With Hooks, a call reads a little more of what it sends and receives:
// the model named in a JSON request's body, and the model and usage of a
// JSON answer or of a stream's events. That costs a few allocations a
// call (see the package's BenchmarkCreateChatCompletion); without Hooks,
// none.
type Hooks struct {
	// CallStart is told of every call the Client's transport takes:
	// Chat, CreateChatCompletion, their streams, every endpoint of
	// OpenAI(), a batch's tasks. (Chat makes one such call per stream it
	// asks for: an answer cut mid-way and asked for again is a second
	// call.) A call refused with ErrDraining is told too, and done at
	// once with ErrorType "draining".
	CallStart func(CallStartInfo)
	// CallDone is told of every started call once it is over: for a
	// stream, once its body is done (read to its end, failed, or closed);
	// for a plain call, once go-openai has read or closed its body.
	// Exactly once per CallStart.
	CallDone func(CallDoneInfo)
	// AttemptDone is told of every HTTP attempt of a call as it is
	// judged, before any wait for the next one.
	AttemptDone func(AttemptInfo)
	// Waited is told of every wait a call made, after it: the backoff
	// between attempts, a longer wait asked for by the server
	// (Retry-After), a wait for a concurrency slot (Config.MaxConcurrent).
	// A wait cut short by the call's end is reported for the time waited.
	Waited func(WaitInfo)
	// TargetChange is told when a target's breaker moves it out of
	// rotation, lets a probe through, or puts it back (see
	// Config.Fallbacks). A client with a single target has no breaker and
	// never reports one.
	TargetChange func(TargetChangeInfo)
	// DrainStart is told when a drain of the client's Tracker begins, by
	// the first Drain (or Shutdown) called. A Tracker shared by several
	// clients tells the Hooks of each.
	DrainStart func(DrainStartInfo)
	// DrainDone is told when that drain has its verdict, once: clean, or
	// forced, with the calls it cancelled.
	DrainDone func(DrainDoneInfo)
}

// Operation names for CallStartInfo.Operation, as OpenTelemetry's
// gen_ai.operation.name spells them; any other endpoint is OpOther.
const (
	OpChat           = "chat"
	OpEmbeddings     = "embeddings"
	OpTextCompletion = "text_completion"
	OpOther          = "other"
)

// CallStartInfo describes a call as it starts.
type CallStartInfo struct {
	// Operation is the kind of endpoint, from the request's path: OpChat
	// (/chat/completions), OpEmbeddings, OpTextCompletion (/completions),
	// else OpOther.
	Operation string
	// Model is the model requested, after the Config.Model default; ""
	// for a request that names none (or is not JSON).
	Model string
	// Stream is true for a call that asked for an event stream.
	Stream bool
	// Target is the base URL of the call's first target, as configured
	// (BaseURL normalised); never a key.
	Target string
}

// Usage is the token count of an answer, when it carried one: a plain
// answer's "usage" object, or a stream's final usage event (llmdrain asks
// for it, stream_options.include_usage, when Hooks are set).
type Usage struct {
	// InputTokens is the prompt's tokens, cached ones included.
	InputTokens int
	// CachedInputTokens is how many of InputTokens the provider served
	// from its prompt cache (usage.prompt_tokens_details.cached_tokens).
	CachedInputTokens int
	// OutputTokens is the answer's tokens, reasoning included.
	OutputTokens int
	// Known is false when the answer carried no usage: the counts are
	// then 0 because nobody said, not because nothing was spent.
	Known bool
}

// CallDoneInfo describes a call that is over.
type CallDoneInfo struct {
	CallStartInfo
	// ResponseModel is the "model" field of the answer (its first event
	// for a stream); "" if unknown.
	ResponseModel string
	// Target is the base URL of the target that answered, or was tried,
	// last; "" if none was (a call refused with ErrDraining).
	Target string
	// Err is the call's error, nil on success: the error the transport
	// returned, an error status given to go-openai (an *openai.APIError
	// will be made of it), or the error that ended the body (a stream cut
	// or stalled). A body closed early by its caller is no error.
	Err error
	// ErrorType is "" on success, else a low-cardinality name of the
	// error, fit for a metric's error.type attribute: the HTTP status
	// ("429", "500"), "timeout", "canceled", "draining",
	// "budget_exceeded" (refused by Config.MaxCost, nothing sent),
	// "forced_shutdown", "stream_stalled", "stream_cut",
	// "malformed_event", "connection", else "other".
	ErrorType string
	// Duration is the whole call, retries and waits included, until its
	// body was done.
	Duration time.Duration
	// TimeToFirstChunk is, for a stream, the time from the call's start
	// to its first data event; 0 otherwise.
	TimeToFirstChunk time.Duration
	// Attempts is how many HTTP attempts the call made.
	Attempts int
	// Usage is the answer's token count, if it carried one.
	Usage Usage
	// Cost is what the answer cost, priced by Config.Prices from Usage and
	// ResponseModel (else Model): zero for a call that got no answer to
	// pay for (Err an error status, or no response at all); Unknown when
	// the model has no price or the answer carried no usage.
	Cost Cost
}

// AttemptInfo describes one HTTP attempt of a call, as it is judged.
type AttemptInfo struct {
	// Target is the base URL of the target the attempt went to.
	Target string
	// Attempt is the attempt's number within the call, from 1.
	Attempt int
	// Status is the HTTP status of its answer; 0 if none came.
	Status int
	// Outcome is how the transport judged it: "healthy" (an answer that
	// is final, an error status included), "overloaded" (429, 503),
	// "broken" (a retryable failure), "silent" (nothing came in time),
	// "fatal" (a failure no retry can change), "abandoned" (the caller
	// gave up or a drain forced).
	Outcome string
	// Err is the attempt's error, nil if an answer came.
	Err error
	// Duration is the attempt's, from sending it to its judgment (for a
	// stream, its first event).
	Duration time.Duration
	// Retry is true when another attempt follows.
	Retry bool
	// Reason says why the attempt failed, "" if it did not: the status
	// ("429", "5xx" for any server error, "4xx" for other client errors),
	// "timeout", "first_token_timeout", "connection", "canceled",
	// "forced_shutdown", "context_length" (moved to a LongContext
	// target).
	Reason string
}

// WaitReason says why a call waited.
type WaitReason string

// The reasons of a wait.
const (
	// WaitBackoff is the backoff between two attempts.
	WaitBackoff WaitReason = "backoff"
	// WaitRetryAfter is a wait the server asked for (retry-after-ms,
	// Retry-After) that was longer than the backoff.
	WaitRetryAfter WaitReason = "retry_after"
	// WaitConcurrency is the wait for a slot under Config.MaxConcurrent.
	WaitConcurrency WaitReason = "concurrency"
)

// WaitInfo describes a wait of a call.
type WaitInfo struct {
	Reason WaitReason
	// Target is the base URL of the target of the attempt waited after;
	// "" for a concurrency wait, and for Chat's wait before it asks
	// again for an answer cut mid-way.
	Target string
	// Duration is how long the call waited.
	Duration time.Duration
}

// TargetState is where a target stands in rotation.
type TargetState string

// The states of a target.
const (
	// TargetHealthy: in rotation.
	TargetHealthy TargetState = "healthy"
	// TargetEjected: out of rotation for a cool-down.
	TargetEjected TargetState = "ejected"
	// TargetProbing: the cool-down is over; one probe is let through.
	TargetProbing TargetState = "probing"
)

// TargetChangeInfo describes a target's move between states.
type TargetChangeInfo struct {
	// Target is the target's base URL.
	Target   string
	From, To TargetState
	// Ejections is how many times in a row the target has been ejected,
	// this one included; 0 when it is back.
	Ejections int
	// Cooldown is how long an ejection lasts; 0 for other moves.
	Cooldown time.Duration
}

// DrainStartInfo describes the start of a drain.
type DrainStartInfo struct {
	// InFlight is how many calls were in flight when it began.
	InFlight int
}

// DrainDoneInfo describes the end of a drain.
type DrainDoneInfo struct {
	// Duration is from the drain's start to its verdict.
	Duration time.Duration
	// Forced are the calls a forced drain cancelled, oldest first; empty
	// for a clean drain.
	Forced []CallInfo
	// Err is the verdict every Drain returns: nil, or the
	// *ForcedDrainError.
	Err error
}
