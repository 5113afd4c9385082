package llmdrain

import (
	"net/url"
	"strings"
	"sync/atomic"
)

// target is one place a call can be sent: an endpoint's base URL and the
// origin its key may be sent to.
type target struct {
	index  int32
	base   string // normalised, without a trailing slash
	origin origin
	bearer secret // "Bearer " + the key, made once; empty: none is sent
}

// origin is the scheme and host of a target.
type origin struct{ scheme, host string }

// at reports whether u is at o: the same scheme and host.
func (o origin) at(u *url.URL) bool {
	return strings.EqualFold(u.Scheme, o.scheme) && strings.EqualFold(u.Host, o.host)
}

// router picks the target of each attempt and learns from the outcomes.
// Its policy today is failover: after failoverAfter consecutive failed
// attempts against the target in use, the next one takes over, wrapping
// around, and stays in use while it works. Requests are built by go-openai
// against the first target and moved to the one picked.
type router struct {
	targets       []*target
	failoverAfter int32
	cur           atomic.Int32 // index of the target in use
	fails         atomic.Int32 // consecutive failed attempts against it
	// onFailover, if set, is told when the target in use changes.
	onFailover func(from, to *target)
}

// pick returns the target of the next attempt.
func (r *router) pick() *target { return r.targets[r.cur.Load()] }

// record learns from an attempt's outcome at tg. Concurrent calls may each
// count a failure; only the first to reach the threshold moves on.
func (r *router) record(tg *target, o outcome) {
	switch {
	case o == healthy:
		// The target answered; whatever the status, it is alive.
		if r.cur.Load() == tg.index {
			r.fails.Store(0)
		}
	case o.retried():
		if len(r.targets) < 2 || r.cur.Load() != tg.index || r.fails.Add(1) < r.failoverAfter {
			return
		}
		next := (tg.index + 1) % int32(len(r.targets))
		if r.cur.CompareAndSwap(tg.index, next) {
			r.fails.Store(0)
			if r.onFailover != nil {
				r.onFailover(tg, r.targets[next])
			}
		}
	}
}

// url moves u, built against the first target, to tg. It reports false
// for a URL that is not under the first target's base, which is left
// where it is.
func (r *router) url(u *url.URL, tg *target) (*url.URL, bool) {
	if tg.index == 0 {
		return u, false
	}
	suffix, ok := strings.CutPrefix(u.String(), r.targets[0].base)
	if !ok {
		return nil, false
	}
	nu, err := url.Parse(tg.base + suffix)
	return nu, err == nil
}

// bearer returns the Authorization value for a request to u: the key of
// the target whose origin u is at, and none for any other origin, so a
// key never goes anywhere the Config did not name, not even on a redirect
// that Go's policy would let it follow.
func (r *router) bearer(u *url.URL) (secret, bool) {
	for _, tg := range r.targets {
		if tg.origin.at(u) {
			return tg.bearer, tg.bearer != ""
		}
	}
	return "", false
}

// host names a target in logs.
func (tg *target) host() string { return tg.origin.host }
