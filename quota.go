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
	b := q.bucket(now, key, lim)
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

// bucket returns key's bucket under lim. A bucket whose limit changed
// keeps its level: the share of it in use.
func (q *LocalQuota) bucket(now time.Time, key string, lim Limit) *localBucket {
	b, ok := q.buckets[key]
	if ok && b.lim == lim {
		return b
	}
	if q.buckets == nil {
		q.buckets = make(map[string]*localBucket)
	}
	if !ok {
		b = new(localBucket)
		q.buckets[key] = b
	}
	b.lim = lim
	period := lim.Period
	if period <= 0 {
		period = time.Minute
	}
	b.requests = resize(b.requests, now, lim.Requests, period)
	b.tokens = resize(b.tokens, now, lim.Tokens, period)
	return b
}

// resize returns b with a new limit, nil when unlimited, new when none.
func resize(b *gcra.Bucket, now time.Time, limit int, period time.Duration) *gcra.Bucket {
	switch {
	case limit <= 0:
		return nil
	case b == nil:
		return gcra.New(limit, period, limit)
	}
	b.Resize(now, limit, period, limit)
	return b
}
