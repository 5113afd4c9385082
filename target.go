package llmdrain

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/llmdrain/llmdrain/internal/breaker"
)

// Breaker defaults: how long a target stays out of rotation. The anchors:
//
//   - Envoy's outlier detection ejects a host after consecutive_5xx (5)
//     errors for base_ejection_time (30 s) × the number of its ejections,
//     up to max_ejection_time (300 s), and never more than
//     max_ejection_percent (10 %) of the hosts (its panic threshold sends
//     to all of them when too few are left).
//   - LiteLLM's router cools a deployment down after allowed_fails (3)
//     failures in a minute for cooldown_time: 5 s by default in its router
//     (the litellm module's own default has been 60 s). It does not cool
//     down the only deployment of a group.
//
// llmdrain ejects after FailoverAfter (3, like allowed_fails) consecutive
// failed attempts, for 5 s (LiteLLM's cool-down) × the ejections in a
// row, as Envoy grows it, but capped at 30 s rather than 300 s: a client
// has few targets, and its primary is the one it wants back, so the cap
// bounds how long traffic stays away from a recovered primary. Neither
// anchor has a half-open state: after the cool-down they return the host
// to full traffic; llmdrain lets one probe through first, so a still-dead
// primary costs one attempt per cool-down, not a wave of them. Every
// target is never out at once: when all are, the one out longest is
// tried, like Envoy's panic mode (a single target has no breaker).
const (
	// DefaultCooldown is a target's first time out of rotation when
	// Config.Cooldown is 0.
	DefaultCooldown = 5 * time.Second
	// DefaultMaxCooldown caps a target's time out of rotation when
	// Config.MaxCooldown is 0.
	DefaultMaxCooldown = 30 * time.Second
)

// target is one place a call can be sent: an endpoint's base URL, the
// origin its key may be sent to, the model it is asked for, and its
// breaker.
type target struct {
	index  int32
	base   string // normalised, without a trailing slash
	origin origin
	key    secret // the key sent to it, for scrubbing what it sends back
	bearer secret // "Bearer " + the key, made once; empty: none is sent
	// authHeader is the header that carries the key, in canonical form:
	// "Authorization", or "Api-Key" for Azure. authz is its values,
	// {bearer} or {key}, made once and shared by every attempt: nothing
	// writes into a request's header values, and a slice per attempt
	// would cost an allocation each.
	authHeader string
	authz      []string
	// headerSets are the attempt headers already made for it; see
	// headers.
	headerSets atomic.Pointer[[]headerSet]
	model      string // put in its completion requests; empty: left as it is
	long       bool   // Target.LongContext
	// breaker takes the target out of rotation; nil (a router of one
	// target) never does.
	breaker *breaker.Breaker
	// gate paces attempts under the target's quota and adapts how many
	// run at once; nil: neither.
	gate *gate
}

// origin is the scheme and host of a target.
type origin struct{ scheme, host string }

// at reports whether u is at o: the same scheme and host.
func (o origin) at(u *url.URL) bool {
	// == first: the same spelling, nearly always, is a byte compare.
	return (u.Scheme == o.scheme || strings.EqualFold(u.Scheme, o.scheme)) && (u.Host == o.host || strings.EqualFold(u.Host, o.host))
}

// router picks the target of each attempt and learns from the outcomes:
// the first target, primary first, whose breaker admits the attempt, and
// when none does the one out longest. A target failing FailoverAfter
// attempts in a row is out for a cool-down; then a probe is let through,
// and its success puts the target back, so traffic returns to the primary
// once it recovers. Requests are built by go-openai against the first
// target and moved to the one picked.
type router struct {
	targets []*target
	keys    []secret // the targets' keys, each once, none empty
	hasLong bool     // some target is marked LongContext
	// onEject and onRestore, if set, are told when a target goes out of
	// rotation, and for how long, and when it is back.
	onEject   func(tg *target, cooldown time.Duration)
	onRestore func(tg *target)
}

// route is what the router knows of one call: the targets it may still
// go to.
type route struct {
	silent []bool // by target index: silent for this call; nil: none was
	long   bool   // too long for all but the LongContext targets
}

// eligible reports whether the call of rt may go to tg.
func (rt *route) eligible(tg *target) bool {
	return (rt.silent == nil || !rt.silent[tg.index]) && (!rt.long || tg.long)
}

// pick returns the target of the call's next attempt and the permit of
// its breaker: the first eligible target that admits it, else the
// eligible one out longest, else (nothing eligible) false.
func (r *router) pick(rt *route) (*target, breaker.Permit, bool) {
	var p breaker.Permit
	tg, admitted := r.choose(rt, func(tg *target) bool {
		var ok bool
		p, ok = tg.breaker.Allow()
		return ok
	})
	if tg == nil {
		return nil, breaker.Permit{}, false
	}
	if !admitted {
		p = tg.breaker.Force() // closed meanwhile, its Force admits as closed
	}
	return tg, p, true
}

// peek returns the target pick would give the call's next attempt were it
// made now, without taking a permit: for the logs, which name where a
// retry is going before its wait. (A half-open target whose probe is out
// is taken as admitting; pick, after the wait, has the last word.)
func (r *router) peek(rt *route) *target {
	tg, _ := r.choose(rt, func(tg *target) bool { return tg.breaker.State() != breaker.Open })
	return tg
}

// choose returns the first eligible target that admits accepts, and
// true; else the eligible one out longest (the first eligible if none is
// out, one closed meanwhile), and false; nil if none is eligible.
func (r *router) choose(rt *route, admits func(*target) bool) (*target, bool) {
	var (
		first, out *target
		outSince   time.Time
	)
	for _, tg := range r.targets {
		if !rt.eligible(tg) {
			continue
		}
		if admits(tg) {
			return tg, true
		}
		if first == nil {
			first = tg
		}
		if since, ok := tg.breaker.OutSince(); ok && (out == nil || since.Before(outSince)) {
			out, outSince = tg, since
		}
	}
	if out == nil {
		return first, false
	}
	return out, false
}

// record learns from an attempt's outcome at tg, releasing its permit: an
// answer (healthy) is a success, a retried failure a failure, and an
// attempt that says nothing of the target (abandoned, fatal) is
// cancelled. A silent target is not tried again by the same call.
func (r *router) record(rt *route, tg *target, p breaker.Permit, o outcome) {
	switch {
	case o == healthy:
		if p.Success() && r.onRestore != nil {
			r.onRestore(tg)
		}
	case o.retried():
		if o == silent {
			if rt.silent == nil {
				rt.silent = make([]bool, len(r.targets))
			}
			rt.silent[tg.index] = true
		}
		if d, opened := p.Failure(); opened && r.onEject != nil {
			r.onEject(tg, d)
		}
	default:
		p.Cancel()
	}
}

// left reports whether the call of rt has a target left to go to.
func (r *router) left(rt *route) bool {
	for _, tg := range r.targets {
		if rt.eligible(tg) {
			return true
		}
	}
	return false
}

// tooLong reports whether resp, from tg, says the call's request is too
// long for it: a 400 whose error code is context_length_exceeded. Such an
// answer is final at tg; the call goes on to the LongContext targets if
// it can (see moveLong), else ends with it. The body is looked at only
// when that could change what happens: when the status would be retried,
// or a LongContext target is there to take the call.
func (r *router) tooLong(rt *route, tg *target, resp *http.Response, o outcome) bool {
	if resp == nil || resp.StatusCode != http.StatusBadRequest ||
		!(o.retried() || o == healthy && r.hasLong && !rt.long && !tg.long) {
		return false
	}
	head, err := io.ReadAll(io.LimitReader(resp.Body, drainLimit))
	bb := &bufferedBody{b: head, rc: resp.Body, tailErr: err}
	if err == nil && len(head) < drainLimit {
		bb.tailErr = io.EOF // ended: an end seen at once releases the call at once
	}
	resp.Body = bb
	var e struct {
		Error *struct {
			Code any `json:"code"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(head))
	return dec.Decode(&e) == nil && e.Error != nil && e.Error.Code == "context_length_exceeded"
}

// moveLong moves the call of rt, too long for the target it was at, to
// the LongContext targets, and reports whether it did: once, and only if
// there is one.
func (r *router) moveLong(rt *route, tg *target) bool {
	if !r.hasLong || rt.long || tg.long {
		return false
	}
	rt.long = true
	if r.left(rt) {
		return true
	}
	rt.long = false
	return false
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

// auth returns the target whose key goes with a request to u made for an
// attempt at tg: tg itself when u is at its origin, so that two targets
// at one origin each send their own; else the first target at u's origin
// (a URL go-openai did not build against the first target); and none for
// any other origin, so a key never goes anywhere the Config did not name,
// not even on a redirect that Go's policy would let it follow.
func (r *router) auth(u *url.URL, tg *target) *target {
	if tg != nil && tg.origin.at(u) {
		return tg
	}
	for _, o := range r.targets {
		if o.origin.at(u) {
			return o
		}
	}
	return nil
}

// bearer returns the Authorization value for a request to u: that of the
// first target at u's origin; see auth.
func (r *router) bearer(u *url.URL) (secret, bool) {
	if tg := r.auth(u, nil); tg != nil {
		return tg.bearer, tg.bearer != ""
	}
	return "", false
}

// otherKeys returns the targets' keys but key: none when they have one
// key between them, the common case.
func (r *router) otherKeys(key secret) []secret {
	if len(r.keys) == 1 && r.keys[0] == key {
		return nil
	}
	others := make([]secret, 0, len(r.keys))
	for _, k := range r.keys {
		if k != key {
			others = append(others, k)
		}
	}
	return others
}

// headerSet is the headers of a request as go-openai makes them (in),
// and the same with a target's Authorization (out): the headers of every
// attempt at that target whose request has exactly in.
type headerSet struct {
	in  []headerField // in a slice: walking it is cheaper than a map
	out http.Header
}

// headerField is a header's name and values.
type headerField struct {
	key    string
	values []string
}

// matches reports whether h has exactly the fields of s.in.
func (s *headerSet) matches(h http.Header) bool {
	if len(h) != len(s.in) {
		return false
	}
	for _, f := range s.in { // distinct keys, as many as h's: all of them
		if v, ok := h[f.key]; !ok || !slices.Equal(v, f.values) {
			return false
		}
	}
	return true
}

// maxHeaderSets bounds a target's header sets: go-openai makes a handful
// of shapes (JSON, streams, uploads), and a caller's odd headers must not
// grow the list.
const maxHeaderSets = 8

// headers returns the headers of an attempt at tg of a request with
// headers h: h and tg's Authorization. When share is set, the map is
// shared by every attempt with the same h, made once: a new map per
// attempt is the largest part of what an attempt costs beyond go-openai's
// own work (an allocation, and hashing each key into it). That is safe
// only when nothing writes into the headers of a request it is given, as
// the http.RoundTripper contract asks, and as net/http's Transport keeps
// to; a RoundTripper of the caller's may not, so for any other base
// transport share is false and each attempt gets its own map. The values'
// slices are shared either way: nothing writes into them.
func (tg *target) headers(h http.Header, share bool) http.Header {
	if share {
		if sets := tg.headerSets.Load(); sets != nil {
			for i := range *sets {
				if s := &(*sets)[i]; s.matches(h) {
					return s.out
				}
			}
		}
	}
	if share {
		// A copy: go-openai's map and values are its request's, and out,
		// shared from now on, must be made of what nobody else holds.
		h = h.Clone()
	}
	out := withoutCredentials(h, 1)
	out[tg.authHeader] = tg.authz
	if cur := tg.headerSets.Load(); share && (cur == nil || len(*cur) < maxHeaderSets) {
		var next []headerSet
		if cur != nil {
			next = slices.Clone(*cur)
		}
		in := make([]headerField, 0, len(h))
		for k, v := range h {
			in = append(in, headerField{k, v})
		}
		next = append(next, headerSet{in: in, out: out})
		tg.headerSets.CompareAndSwap(cur, &next) // a lost race only loses a set
	}
	return out
}

// withoutCredentials returns a new map of h's headers, sharing their
// values, with room for extra more, but for the credentials:
// Authorization and Api-Key are the call's alone to set, per target, and
// any that came with the request (go-openai's empty api-key for Azure)
// stay out.
func withoutCredentials(h http.Header, extra int) http.Header {
	out := make(http.Header, len(h)+extra)
	for k, v := range h {
		if k != "Authorization" && k != "Api-Key" {
			out[k] = v
		}
	}
	return out
}

// host names a target in logs.
func (tg *target) host() string { return tg.origin.host }
