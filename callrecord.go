package llmdrain

import (
	"context"
	"sync/atomic"
)

// callRecord is what the transport learned about one call, for a caller
// in this package that needs more than the call's error: the Batch runner
// reports retries per task, and tells a task that failed from one whose
// retries a deadline cut short. A caller puts a record into the call's
// context with withCallRecord; the transport fills it and never depends on
// who reads it. Calls without a record cost one context lookup per attempt.
type callRecord struct {
	attempts atomic.Int32 // HTTP attempts made, retries included
	// cut is set when a retryable failure was not retried because the wait
	// before the next attempt would have ended after a deadline.
	cut atomic.Int32 // one of the deadline* constants
	// reserved is set, before the call, by a caller that reserved the
	// call's cost in the client's budget (Config.MaxCost) itself and
	// settles it: the batch runner, whose tasks wait for room rather than
	// be refused at once. The transport then leaves the budget alone.
	reserved bool
}

// Which deadline cut a call's retries short.
const (
	deadlineNone   int32 = iota
	deadlineCaller       // the call's context's
	deadlineDrain        // the drain's, which came first
)

type callRecordKey struct{}

// withCallRecord returns a context carrying a fresh record, and the record.
func withCallRecord(ctx context.Context) (context.Context, *callRecord) {
	r := new(callRecord)
	return context.WithValue(ctx, callRecordKey{}, r), r
}

func callRecordOf(ctx context.Context) *callRecord {
	r, _ := ctx.Value(callRecordKey{}).(*callRecord)
	return r
}

// countAttempt counts an attempt of the call of ctx.
func countAttempt(ctx context.Context) {
	if r := callRecordOf(ctx); r != nil {
		r.attempts.Add(1)
	}
}

// noteDeadlineCut records that the call of ctx stops retrying a retryable
// failure because the next attempt would come after a deadline: the
// drain's, when tr has one that is not later than ctx's, else ctx's.
func noteDeadlineCut(ctx context.Context, tr *Tracker) {
	r := callRecordOf(ctx)
	if r == nil {
		return
	}
	which := deadlineCaller
	if ddl, ok := tr.drainDeadline(); ok {
		if dl, cok := ctx.Deadline(); !cok || !ddl.After(dl) {
			which = deadlineDrain
		}
	}
	r.cut.Store(which)
}
