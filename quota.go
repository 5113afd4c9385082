package llmdrain

import (
	"context"
	"sync"
	"time"

	"github.com/llmdrain/llmdrain/internal/gcra"
)

// Limit is what a quota bucket allows: Requests and Tokens per Period,
// each axis a bucket that holds at most that many and refills
// continuously at that rate, the way providers meter a key (OpenAI's
// x-ratelimit-reset-* is the time until the bucket is full again). 0 on an
// axis means unlimited on it.
type Limit struct {
	Requests, Tokens int
	Period           time.Duration
}

// Quota is where the pacing draws each attempt's requests and tokens from
// before it is sent: LocalQuota, the default, paces one process; a shared
// implementation (the redisquota module) paces every replica that uses the
// same key against the same target from one bucket.
//
// The pacing learns each target's Limit from its x-ratelimit-limit-*
// headers and asks the Quota only once it knows one.
type Quota interface {
	// Take draws requests and tokens from bucket key under lim. It returns
	// 0 if they were drawn, or how long to wait before asking again
	// (nothing drawn). Negative requests or tokens give back what an
	// earlier draw took and did not use (an estimate larger than the usage
	// that came back); such a call always returns 0. An error means the
	// quota could not be consulted; the caller then paces locally.
	//
	// key never contains an API key: it is a hash of the target's origin
	// and a fingerprint of its key, the same in every process, so that
	// replicas sharing a key share a bucket.
	Take(ctx context.Context, key string, lim Limit, requests, tokens int) (time.Duration, error)
}

// LocalQuota is the in-process Quota, used when Config.Quota is nil: a
// GCRA bucket per key and axis, each as deep as its limit. Share one
// between clients to pace them together. The zero value is ready to use
// and safe for concurrent use.
type LocalQuota struct {
	// now is the clock; nil means time.Now. Tests set it.
	now func() time.Time

	mu      sync.Mutex
	buckets map[string]*localBucket
}

type localBucket struct {
	lim              Limit
	requests, tokens *gcra.Bucket // nil: that axis unlimited
}

// Take implements Quota. It never returns an error.
func (q *LocalQuota) Take(_ context.Context, key string, lim Limit, requests, tokens int) (time.Duration, error) {
	now := time.Now()
	if q.now != nil {
		now = q.now()
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	b := q.bucket(key, lim)
	if requests < 0 || tokens < 0 {
		if b.requests != nil && requests < 0 {
			b.requests.Give(now, -requests)
		}
		if b.tokens != nil && tokens < 0 {
			b.tokens.Give(now, -tokens)
		}
		return 0, nil
	}
	// Both axes or neither: a request admitted on one and refused on the
	// other would hold what it drew while it waits.
	var wait time.Duration
	if b.requests != nil && requests > 0 {
		wait = max(wait, b.requests.Take(now, requests))
		if wait == 0 {
			defer func() {
				if wait > 0 {
					b.requests.Give(now, requests)
				}
			}()
		}
	}
	if b.tokens != nil && tokens > 0 && wait == 0 {
		wait = b.tokens.Take(now, tokens)
	}
	return wait, nil
}

// bucket returns key's bucket, made anew when lim changed (a provider's
// new limit starts full, as the provider's own does not; the headers
// correct it).
func (q *LocalQuota) bucket(key string, lim Limit) *localBucket {
	if b, ok := q.buckets[key]; ok && b.lim == lim {
		return b
	}
	if q.buckets == nil {
		q.buckets = make(map[string]*localBucket)
	}
	b := &localBucket{lim: lim}
	period := lim.Period
	if period <= 0 {
		period = time.Minute
	}
	if lim.Requests > 0 {
		b.requests = gcra.New(lim.Requests, period, lim.Requests)
	}
	if lim.Tokens > 0 {
		b.tokens = gcra.New(lim.Tokens, period, lim.Tokens)
	}
	q.buckets[key] = b
	return b
}
