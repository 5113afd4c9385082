package llmdrain

import (
	"context"
	"errors"
	"net/http"
)

// outcome is what one attempt says about its call and about the target it
// was sent to. The transport acts on it in one place: the call either ends
// (healthy, fatal, abandoned) or is tried again (overloaded, broken), and
// the target's state (failover today) learns from it.
type outcome uint8

const (
	// healthy: the target answered and the answer is final, a success
	// or an error no retry can change (400, 401, 404, ...). The target
	// is alive.
	healthy outcome = iota
	// overloaded: the target is alive but asks for less, 429 or 503.
	// Retried.
	overloaded
	// broken: a failure worth retrying, a 5xx or 408/409, a connection
	// refused or reset, an attempt timeout, a body cut before it was
	// handed over. Retried.
	broken
	// fatal: no answer, and none will come by retrying (a TLS
	// certificate error). The call ends with the error; the target's
	// state is left as it was.
	fatal
	// abandoned: the caller's context ended, or a forced drain cancelled
	// the call. Never retried, and says nothing about the target.
	abandoned
	// silent: the target took the request and sent nothing of an answer
	// within the time allowed for its first sign of one (errSilent).
	// Worth trying elsewhere, but waiting once per target is enough.
	silent
)

var outcomeNames = [...]string{"healthy", "overloaded", "broken", "fatal", "abandoned", "silent"}

// errSilent is matched (errors.Is) by the error of an attempt whose target
// sent nothing of an answer in time; classify makes it a silent outcome.
var errSilent = errors.New("llmdrain: no answer in time")

func (o outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "outcome(?)"
}

// retried reports whether a call whose attempt ended so may be tried again.
func (o outcome) retried() bool { return o == overloaded || o == broken || o == silent }

// classify judges an attempt of the call of ctx that ended with resp or
// err. shouldRetry is Config.ShouldRetry: the caller's word on what is
// worth retrying; classify adds only what the caller cannot change, that a
// call whose context ended is over. A context cut by the attempt's own
// timeout after a successful answer began (see call.attempt) is not the
// call's end: the answer is judged, and its body ends with the cut.
func classify(ctx context.Context, resp *http.Response, err error, shouldRetry func(*http.Response, error) bool) outcome {
	if ctx.Err() != nil && !attemptCut(context.Cause(ctx)) {
		return abandoned
	}
	// Asked once: it is the caller's code, and may count what it sees.
	if !shouldRetry(resp, err) {
		if err != nil {
			return fatal
		}
		return healthy
	}
	if errors.Is(err, errSilent) {
		return silent
	}
	if err == nil && (resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable) {
		return overloaded
	}
	return broken
}
