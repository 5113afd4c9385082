package llmdrain

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"syscall"
	"time"
)

// keyGuard is the base transport as the retrying transport uses it: every
// attempt goes through it. It keeps the API key on the wire where it
// belongs, and out of what comes back:
//
//   - An attempt at a plain-http loopback endpoint, which carries the key
//     in clear, goes through plain: a transport that uses no proxy and
//     connects to loopback addresses only, checked at connect time, before
//     a byte is sent. (Plain http to other hosts, opted into with
//     InsecurePlainHTTP, goes through base.)
//   - The key is scrubbed from each response's status line and from the
//     errors of the base transport (net/http quotes a malformed status
//     line in its error) before go-openai's errors, the retry log or a
//     RetryError can show them.
type keyGuard struct {
	base http.RoundTripper
	// plain is nil unless an endpoint is plain http and base is an
	// *http.Transport to derive it from.
	plain      *http.Transport
	plainHosts []string // host[:port] of the plain-http endpoints
	keys       []secret // every target's key, none empty
}

// newKeyGuard wraps base for a client whose endpoints have the given
// origins and keys.
func newKeyGuard(base http.RoundTripper, origins []origin, keys []secret) *keyGuard {
	g := &keyGuard{base: base}
	for _, k := range keys {
		if k != "" && !slices.Contains(g.keys, k) {
			g.keys = append(g.keys, k)
		}
	}
	for _, o := range origins {
		// A plain-http endpoint at another host was opted into
		// (InsecurePlainHTTP): it goes through base as it is.
		if o.scheme == "http" && isLoopback((&url.URL{Host: o.host}).Hostname()) {
			g.plainHosts = append(g.plainHosts, o.host)
		}
	}
	if tr, ok := base.(*http.Transport); ok && len(g.plainHosts) > 0 {
		g.plain = loopbackTransport(tr)
	}
	return g
}

func (g *keyGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	var rt http.RoundTripper = g.base
	if g.plain != nil && req.URL.Scheme == "http" && g.isPlainHost(req.URL.Host) {
		rt = g.plain
	}
	resp, err := rt.RoundTrip(req)
	// Every key, not only the one sent: a response can come from a
	// redirect, and keys at one origin could be echoed by the same server.
	for _, key := range g.keys {
		if err != nil {
			err = scrubError(err, key)
		} else if resp != nil && strings.Contains(resp.Status, string(key)) {
			resp.Status = string(scrub([]byte(resp.Status), key, false))
		}
	}
	return resp, err
}

// isPlainHost reports whether host is that of a plain-http endpoint: the
// same test the transport's atEndpoint makes before it adds the key.
func (g *keyGuard) isPlainHost(host string) bool {
	for _, h := range g.plainHosts {
		if host == h || strings.EqualFold(host, h) {
			return true
		}
	}
	return false
}

// CloseIdleConnections closes the idle connections of both transports.
func (g *keyGuard) CloseIdleConnections() {
	if c, ok := g.base.(interface{ CloseIdleConnections() }); ok {
		c.CloseIdleConnections()
	}
	if g.plain != nil {
		g.plain.CloseIdleConnections()
	}
}

// loopbackTransport derives from tr the transport of plain-http attempts: a
// clone that uses no proxy and whose connections are to loopback
// addresses only.
func loopbackTransport(tr *http.Transport) *http.Transport {
	c := tr.Clone()
	c.Proxy = nil
	c.OnProxyConnectResponse = nil
	dial := c.DialContext
	if dial == nil {
		// net/http's default dialer, but for the check before connecting.
		// (A deprecated Dial func is not used: DialContext, set below,
		// takes priority over it.)
		dial = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: loopbackOnly}).DialContext
	}
	c.DialContext = loopbackDial(dial)
	return c
}

// loopbackDial wraps dial so that localhost names are connected to on
// 127.0.0.1, then ::1, without asking a resolver (RFC 6761 section 6.3
// allows it: a resolver, or DNS, could answer anything), and so that a
// connection to any other than a loopback address is closed before it is
// used, whatever the dialer did.
func loopbackDial(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		targets := []string{addr}
		if host, port, err := net.SplitHostPort(addr); err == nil && isLocalhostName(host) {
			targets = []string{net.JoinHostPort("127.0.0.1", port), net.JoinHostPort("::1", port)}
		}
		var first error
		for _, target := range targets {
			conn, err := dial(ctx, network, target)
			if err == nil {
				if err = checkLoopbackConn(conn, addr); err != nil {
					conn.Close()
					return nil, err
				}
				return conn, nil
			}
			if first == nil {
				first = err
			}
			if ctx.Err() != nil {
				break
			}
		}
		return nil, first
	}
}

// errNotLoopback is the error of a plain-http attempt whose connection
// would not have been to a loopback address.
var errNotLoopback = errors.New("not a loopback address; plain http carries the API key in clear, so it is sent over loopback only")

// checkLoopbackConn fails unless conn is to a loopback address.
func checkLoopbackConn(conn net.Conn, addr string) error {
	remote := conn.RemoteAddr()
	if remote != nil && isLoopbackAddr(remote.String()) {
		return nil
	}
	return fmt.Errorf("llmdrain: plain http to %s connected to %v: %w", addr, remote, errNotLoopback)
}

// loopbackOnly is a net.Dialer Control func refusing, before the connect,
// any address but a loopback one.
func loopbackOnly(network, address string, _ syscall.RawConn) error {
	if isLoopbackAddr(address) {
		return nil
	}
	return fmt.Errorf("llmdrain: plain http to %s refused: %w", address, errNotLoopback)
}

// isLoopbackAddr reports whether addr, "ip:port", is at a loopback IP.
func isLoopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	host, _, _ = strings.Cut(host, "%") // an IPv6 zone
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// scrubError returns err, or, if its text contains the key, an error with
// that text scrubbed. The replacement still matches with errors.Is what
// err matched, but does not unwrap: the errors in err's chain could show
// the key.
func scrubError(err error, key secret) error {
	if key == "" || !strings.Contains(err.Error(), string(key)) {
		return err
	}
	return &scrubbedError{msg: string(scrub([]byte(err.Error()), key, false)), err: err}
}

type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }

// Is lets errors.Is see through to the original error, which Unwrap would
// expose.
func (e *scrubbedError) Is(target error) bool { return errors.Is(e.err, target) }

// scrubJSON returns b, a body already scrubbed of the key as bytes, with
// the key also taken out of the strings a JSON decoder reads from it: a
// server can quote the key with escapes ("\u002d" for "-"), which go-openai
// would decode into an error's message. Only when such a string is found is
// the body decoded and encoded again (keys in sorted order, numbers as they
// were); otherwise, and for a body that is not JSON, b is returned as it
// is.
func scrubJSON(b []byte, key secret) []byte {
	if key == "" || bytes.IndexByte(b, '\\') < 0 {
		return b // no escape: the bytes are the strings
	}
	if !json.Valid(b) {
		return b // go-openai shows it as it is, escapes and all
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return b
	}
	v, found := scrubValue(v, string(key))
	if !found {
		return b
	}
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	if enc.Encode(v) != nil {
		return b
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n"))
}

// scrubValue replaces key in every string of a decoded JSON value, object
// member names included, and reports whether there was any.
func scrubValue(v any, key string) (any, bool) {
	switch v := v.(type) {
	case string:
		if strings.Contains(v, key) {
			return strings.ReplaceAll(v, key, "[redacted]"), true
		}
		return v, false
	case []any:
		found := false
		for i, e := range v {
			var f bool
			v[i], f = scrubValue(e, key)
			found = found || f
		}
		return v, found
	case map[string]any:
		found := false
		for k, e := range v {
			e, f := scrubValue(e, key)
			found = found || f
			if strings.Contains(k, key) {
				delete(v, k)
				k, found = strings.ReplaceAll(k, key, "[redacted]"), true
			}
			v[k] = e
		}
		return v, found
	}
	return v, false
}

// secret holds the API key; it prints as "[redacted]" with every verb.
type secret string

func (secret) Format(f fmt.State, _ rune) { io.WriteString(f, "[redacted]") }

// scrub replaces the key wherever it appears in b. A server that echoes the
// key in an error would otherwise put it into the error's text, and from
// there into logs. When b was cut short, a key cut in two at its end is
// dropped too.
func scrub(b []byte, key secret, cut bool) []byte {
	if key == "" {
		return b
	}
	b = bytes.ReplaceAll(b, []byte(key), []byte("[redacted]"))
	if cut {
		b = b[:len(b)-min(len(b), len(key)-1)]
	}
	return b
}
