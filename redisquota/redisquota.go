// Package redisquota shares one llmdrain.Quota between the replicas of a
// service through Redis, so that a fleet using one API key stays under the
// key's rate limit together instead of each replica pacing as if it were
// alone.
//
// Every replica draws each attempt's requests and tokens from the same two
// buckets per key and target, kept in Redis by go-redis/redis_rate's GCRA
// (the algorithm LocalQuota runs in process): a bucket is one timestamp, a
// draw is one atomic script run, so no replica needs to know how many
// others there are.
//
// Redis is an optimisation here, never a dependency of a call: when it does
// not answer within Options.Timeout, Take returns an error matching
// ErrUnavailable and the client paces that attempt from the provider's
// headers locally. For Options.Cooldown after a failure Take does not ask
// Redis at all, and then one call at a time tries it again. The change is
// logged once each way.
//
//	rdb := redis.NewClient(&redis.Options{Addr: "redis:6379"})
//	quota, err := redisquota.New(rdb, redisquota.Options{Logger: logger})
//	client, err := llmdrain.New(llmdrain.Config{MaxConcurrent: 64, Quota: quota})
package redisquota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/llmdrain/llmdrain"
	"github.com/redis/go-redis/v9"
)

// ErrUnavailable is matched (errors.Is) by the error Take returns when Redis
// could not be consulted: it did not answer within Options.Timeout, refused
// the connection, answered with an error, or failed within the last
// Options.Cooldown. The error's text includes Redis's own error.
var ErrUnavailable = errors.New("redisquota: redis unavailable")

// Defaults of Options' zero fields.
const (
	DefaultTimeout  = 100 * time.Millisecond
	DefaultCooldown = time.Second
	DefaultPrefix   = "llmdrain:quota:"
)

// Options configures a Quota. The zero value is the documented defaults.
type Options struct {
	// Timeout bounds each Take's conversation with Redis (one or two
	// script runs), whatever the client's own timeouts: a Redis that hangs
	// costs an attempt at most this much before it is paced locally.
	// 0 means DefaultTimeout (100 ms); it must not be negative.
	Timeout time.Duration
	// Cooldown is how long after a failure Take answers ErrUnavailable
	// without asking Redis, so a dead Redis costs calls nothing; then one
	// Take at a time tries again. 0 means DefaultCooldown (1 s); it must
	// not be negative.
	Cooldown time.Duration
	// Prefix is put before every key this Quota writes (redis_rate adds
	// its own "rate:" in front). "" means DefaultPrefix. Replicas must
	// use the same prefix to share buckets.
	Prefix string
	// Logger receives one warning when Redis becomes unavailable and one
	// info line when it answers again. Nil means silent.
	Logger *slog.Logger
}

// Quota is an llmdrain.Quota kept in Redis. Make one with New; it is safe
// for concurrent use, and one Quota can serve several clients.
type Quota struct {
	limiter  *redis_rate.Limiter
	timeout  time.Duration
	cooldown time.Duration
	prefix   string
	logger   *slog.Logger

	down      atomic.Bool  // Redis failed and has not answered since
	downUntil atomic.Int64 // unix nanoseconds before which Take does not ask Redis
	probing   atomic.Bool  // one Take is trying Redis again
	lastErr   atomic.Pointer[error]

	mu   sync.Mutex
	keys map[string]*keyState
}

// keyState serialises one process's Takes of one key, and remembers the
// last refusal. When a bucket is empty, every caller waiting on it wakes
// at the same moment; without this each would ask Redis, one would be
// admitted and the rest refused, dozens of round trips per admitted draw.
// With it one asks, and the others are told the same wait without a round
// trip.
type keyState struct {
	turn chan struct{} // holds one token: the right to ask Redis for this key
	// refused is the last refusal: draws at least this large are refused
	// until then. Other replicas only draw more meanwhile (or give back a
	// little), so the wait holds.
	until            time.Time
	requests, tokens int
}

var _ llmdrain.Quota = (*Quota)(nil)

// New returns a Quota that keeps its buckets in rdb (a *redis.Client,
// *redis.ClusterClient, *redis.Ring or failover client). It does not
// contact Redis: a Redis that is down when the service starts is the same
// as one that goes down later. It fails only on an invalid option, naming
// the field.
func New(rdb redis.UniversalClient, opts Options) (*Quota, error) {
	var errs []error
	if rdb == nil {
		errs = append(errs, errors.New("redisquota: nil redis client"))
	}
	if opts.Timeout < 0 {
		errs = append(errs, fmt.Errorf("redisquota: Options.Timeout %v is negative", opts.Timeout))
	}
	if opts.Cooldown < 0 {
		errs = append(errs, fmt.Errorf("redisquota: Options.Cooldown %v is negative", opts.Cooldown))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	q := &Quota{
		timeout:  opts.Timeout,
		cooldown: opts.Cooldown,
		prefix:   opts.Prefix,
		logger:   opts.Logger,
	}
	if rdb != nil {
		q.limiter = redis_rate.NewLimiter(rdb)
	}
	if q.timeout == 0 {
		q.timeout = DefaultTimeout
	}
	if q.cooldown == 0 {
		q.cooldown = DefaultCooldown
	}
	if q.prefix == "" {
		q.prefix = DefaultPrefix
	}
	return q, nil
}

// Take implements llmdrain.Quota: it draws requests and tokens from the
// shared buckets of key under lim, both or neither, and returns 0, or how
// long until the same draw would be admitted. A draw larger than an axis's
// whole bucket draws the whole bucket, so it waits for a full bucket rather
// than never passing. Negative amounts give back an earlier over-estimate
// (as far as the bucket is not already full) and return 0.
//
// It returns within Options.Timeout. On failure the error matches
// ErrUnavailable, or is ctx's error when ctx ended first; nothing is known
// to be drawn, and the caller paces locally.
func (q *Quota) Take(ctx context.Context, key string, lim llmdrain.Limit, requests, tokens int) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	// While Redis is down, one Take at a time probes it once the cooldown
	// is over; the others do not wait for it.
	probe := false
	if q.down.Load() {
		if !q.admit(time.Now()) {
			return 0, q.unavailable()
		}
		probe = true
		defer q.probing.Store(false)
	}
	// The turn: one Take per key asks Redis at a time. Its holder is
	// bounded by Timeout, so a turn comes within about that much unless
	// Redis is slow for everyone, which the bound below turns into local
	// pacing rather than a queue.
	ks := q.keyState(key)
	turn := time.NewTimer(2 * q.timeout)
	defer turn.Stop()
	select {
	case ks.turn <- struct{}{}:
		defer func() { <-ks.turn }()
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-turn.C:
		return 0, fmt.Errorf("%w: other calls' draws of the key held it for %v", ErrUnavailable, 2*q.timeout)
	}
	now := time.Now()
	if requests < 0 || tokens < 0 {
		ks.until = time.Time{} // a give-back may admit what was refused
	} else if now.Before(ks.until) && requests >= ks.requests && tokens >= ks.tokens {
		return ks.until.Sub(now), nil
	}
	if !probe && q.cooling(now) {
		return 0, q.unavailable() // it failed while this Take waited for its turn
	}
	tctx, cancel := context.WithTimeout(ctx, q.timeout)
	defer cancel()
	// go-redis applies a context's deadline to the socket only with
	// ContextTimeoutEnabled, which is off by default; a Redis that accepts
	// and never answers would then hold the call for ReadTimeout (3 s),
	// more than once with retries. Waiting here bounds Take whatever the
	// client's options; the command itself ends with its own timeouts.
	type result struct {
		wait time.Duration
		err  error
	}
	done := make(chan result, 1)
	go func() {
		w, err := q.take(tctx, key, lim, requests, tokens)
		done <- result{w, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-tctx.Done():
		r.err = tctx.Err()
	}
	if r.err == nil {
		q.recovered()
		if r.wait > 0 {
			ks.until, ks.requests, ks.tokens = now.Add(r.wait), requests, tokens
		}
		return r.wait, nil
	}
	if ctx.Err() != nil {
		return 0, ctx.Err() // the caller gave up: that says nothing about Redis
	}
	return 0, q.failed(r.err)
}

// keyState returns key's state, made on first use.
func (q *Quota) keyState(key string) *keyState {
	q.mu.Lock()
	defer q.mu.Unlock()
	ks, ok := q.keys[key]
	if !ok {
		if q.keys == nil {
			q.keys = make(map[string]*keyState)
		}
		ks = &keyState{turn: make(chan struct{}, 1)}
		q.keys[key] = ks
	}
	return ks
}

// take runs the draw against Redis. Requests first: they are the cheaper
// axis to give back when tokens refuse.
func (q *Quota) take(ctx context.Context, key string, lim llmdrain.Limit, requests, tokens int) (time.Duration, error) {
	period := lim.Period
	if period <= 0 {
		period = time.Minute // as LocalQuota
	}
	rkey, tkey := q.prefix+"{"+key+"}:requests", q.prefix+"{"+key+"}:tokens"
	rlim := redis_rate.Limit{Rate: lim.Requests, Burst: lim.Requests, Period: period}
	tlim := redis_rate.Limit{Rate: lim.Tokens, Burst: lim.Tokens, Period: period}

	if requests < 0 || tokens < 0 {
		var errs []error
		if lim.Requests > 0 && requests < 0 {
			_, err := q.limiter.AllowN(ctx, rkey, rlim, requests)
			errs = append(errs, err)
		}
		if lim.Tokens > 0 && tokens < 0 {
			_, err := q.limiter.AllowN(ctx, tkey, tlim, tokens)
			errs = append(errs, err)
		}
		return 0, errors.Join(errs...)
	}

	drawn := 0
	if lim.Requests > 0 && requests > 0 {
		n := min(requests, lim.Requests)
		res, err := q.limiter.AllowN(ctx, rkey, rlim, n)
		if err != nil {
			return 0, err
		}
		if res.Allowed == 0 {
			return max(res.RetryAfter, time.Millisecond), nil
		}
		drawn = n
	}
	if lim.Tokens > 0 && tokens > 0 {
		n := min(tokens, lim.Tokens)
		res, err := q.limiter.AllowN(ctx, tkey, tlim, n)
		if err != nil {
			return 0, err
		}
		if res.Allowed == 0 {
			if drawn > 0 {
				// Both or neither: a request admitted on one axis and
				// refused on the other would hold its draw while it waits.
				if _, err := q.limiter.AllowN(ctx, rkey, rlim, -drawn); err != nil {
					return 0, err
				}
			}
			return max(res.RetryAfter, time.Millisecond), nil
		}
	}
	return 0, nil
}

// admit tells whether this Take may ask Redis: always while it is up;
// while it is down, one Take at a time (the probe, which clears probing
// when it is done) once the cooldown has passed.
func (q *Quota) admit(now time.Time) bool {
	if !q.down.Load() {
		return true
	}
	if q.cooling(now) {
		return false
	}
	return q.probing.CompareAndSwap(false, true)
}

// cooling reports whether Redis failed less than Cooldown ago.
func (q *Quota) cooling(now time.Time) bool {
	return q.down.Load() && now.UnixNano() < q.downUntil.Load()
}

func (q *Quota) unavailable() error {
	if p := q.lastErr.Load(); p != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, *p)
	}
	return ErrUnavailable
}

func (q *Quota) failed(err error) error {
	q.lastErr.Store(&err)
	q.downUntil.Store(time.Now().Add(q.cooldown).UnixNano())
	if q.down.CompareAndSwap(false, true) && q.logger != nil {
		q.logger.Warn("redisquota: redis unavailable; pacing locally until it answers",
			"err", err, "retry_in", q.cooldown)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func (q *Quota) recovered() {
	if q.down.CompareAndSwap(true, false) && q.logger != nil {
		q.logger.Info("redisquota: redis answers again; sharing the quota")
	}
}
