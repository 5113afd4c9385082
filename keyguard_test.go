package llmdrain

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/cenkalti/backoff/v4"
	openai "github.com/sashabaranov/go-openai"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/llmdrain/llmdrain/llmtest"
)

// recorder is a raw TCP server on 127.0.0.1 that records what each
// connection sends and answers each request it reads with the next of its
// canned responses (the last one repeated), closing the connection.
type recorder struct {
	ln        net.Listener
	responses []string
	mu        sync.Mutex
	conns     int
	got       bytes.Buffer
	wg        sync.WaitGroup
}

func newRecorder(t *testing.T, responses ...string) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &recorder{ln: ln, responses: responses}
	r.wg.Add(1)
	go r.serve()
	t.Cleanup(r.close)
	return r
}

func (r *recorder) addr() string { return r.ln.Addr().String() }

func (r *recorder) serve() {
	defer r.wg.Done()
	for {
		conn, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer conn.Close()
			r.mu.Lock()
			n := r.conns
			r.conns++
			r.mu.Unlock()
			var seen bytes.Buffer
			req, err := http.ReadRequest(bufio.NewReader(io.TeeReader(conn, &seen)))
			if err == nil {
				_, _ = io.Copy(io.Discard, req.Body)
			}
			r.mu.Lock()
			r.got.Write(seen.Bytes())
			r.mu.Unlock()
			if err == nil && len(r.responses) > 0 {
				_, _ = io.WriteString(conn, r.responses[min(n, len(r.responses)-1)])
			}
		}()
	}
}

// close stops the server and waits for its connections to end.
func (r *recorder) close() {
	r.ln.Close()
	r.wg.Wait()
}

// received reports the connections accepted and the bytes they sent, once
// every connection has ended.
func (r *recorder) received() (int, string) {
	r.close()
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conns, r.got.String()
}

// TestPlainHTTPNeverProxied has a configured HTTP proxy, a listener that
// records what it receives, under a plain-http endpoint on loopback: it must
// receive nothing, and the key only the real server. net/http would proxy
// "api.localhost" under $HTTP_PROXY (and resolve it through DNS), and any
// host under an explicit Proxy func. ProxyFromEnvironment reads the
// environment once per process, so the proxy is set with http.ProxyURL.
func TestPlainHTTPNeverProxied(t *testing.T) {
	for _, host := range []string{"api.localhost", "localhost", "127.0.0.1"} {
		for _, where := range []string{"BaseURL", "FallbackURLs"} {
			t.Run(host+" as "+where, func(t *testing.T) {
				proxy := newRecorder(t, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				srv := newServer(t)
				_, port, err := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
				require.NoError(t, err)
				ep := "http://" + net.JoinHostPort(host, port)
				tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: proxy.addr()})}
				defer tr.CloseIdleConnections()
				cfg := Config{BaseURL: ep, MaxRetries: -1, HTTPClient: &http.Client{Transport: tr}}
				if where == "FallbackURLs" {
					// The primary fails at once: nothing listens on it.
					dead, err := net.Listen("tcp", "127.0.0.1:0")
					require.NoError(t, err)
					require.NoError(t, dead.Close())
					cfg.BaseURL = "http://" + dead.Addr().String()
					cfg.FallbackURLs = []string{ep}
					cfg.FailoverAfter = 1
					cfg.MaxRetries = 1
				}
				c := newTestClient(t, srv, cfg)
				got, err := c.Chat(context.Background(), "not through the proxy")
				require.NoError(t, err)
				assert.Equal(t, llmtest.Reply("not through the proxy"), got)
				assert.Equal(t, 1, settled(t, srv).Completed("not through the proxy"), "the key reached the server")
				conns, sent := proxy.received()
				assert.Zero(t, conns, "connections to the proxy")
				assert.Empty(t, sent, "bytes sent to the proxy")
			})
		}
	}
}

// TestPlainHTTPNonLoopbackConnectionRefused has a plain-http endpoint's name
// lead to a connection that is not to a loopback address: the transport's
// own dialer stands in for a resolver that answers with a remote address.
// The attempt fails before anything is sent, with an error that says why.
func TestPlainHTTPNonLoopbackConnectionRefused(t *testing.T) {
	other := newRecorder(t, "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, other.addr())
		if err != nil {
			return nil, err
		}
		return remoteAddrConn{conn, &net.TCPAddr{IP: net.ParseIP("192.0.2.10"), Port: 80}}, nil
	}}
	defer tr.CloseIdleConnections()
	c, err := New(Config{APIKey: fakeKey, BaseURL: "http://api.localhost:8080/v1", MaxRetries: -1, HTTPClient: &http.Client{Transport: tr}})
	require.NoError(t, err)
	defer c.http.CloseIdleConnections()
	_, err = c.Chat(context.Background(), "x")
	require.Error(t, err)
	assert.ErrorIs(t, err, errNotLoopback)
	assert.Contains(t, err.Error(), "192.0.2.10:80: not a loopback address")
	conns, sent := other.received()
	assert.Equal(t, 1, conns)
	assert.Empty(t, sent, "nothing, the key least of all, is sent")
}

// remoteAddrConn is a connection that says it is to remote.
type remoteAddrConn struct {
	net.Conn
	remote net.Addr
}

func (c remoteAddrConn) RemoteAddr() net.Addr { return c.remote }

// TestLoopbackDialerRefusesBeforeConnecting checks the dialer used when the
// transport has none: an address that is not loopback is refused before
// the connect (192.0.2.1 is TEST-NET-1, routed nowhere).
func TestLoopbackDialerRefusesBeforeConnecting(t *testing.T) {
	tr := loopbackTransport(&http.Transport{Proxy: http.ProxyFromEnvironment})
	assert.Nil(t, tr.Proxy)
	_, err := tr.DialContext(context.Background(), "tcp", "192.0.2.1:80")
	require.ErrorIs(t, err, errNotLoopback)
	assert.Contains(t, err.Error(), "192.0.2.1:80")
	for _, addr := range []string{"127.0.0.1:80", "127.1.2.3:80", "[::1]:80"} {
		assert.NoError(t, loopbackOnly("tcp", addr, nil), addr)
	}
	for _, addr := range []string{"10.0.0.1:80", "[::ffff:10.0.0.1]:80", "[fe80::1%lo]:80", "localhost:80", "garbage"} {
		assert.ErrorIs(t, loopbackOnly("tcp", addr, nil), errNotLoopback, addr)
	}
}

// TestPlainHTTPThroughOpaqueTransport: a RoundTripper that is not an
// *http.Transport cannot have its proxy and dialer checked, so plain http
// through one is refused for names under .localhost, which net/http would
// proxy and resolve through DNS, and accepted for loopback IPs and
// localhost.
func TestPlainHTTPThroughOpaqueTransport(t *testing.T) {
	opaque := &http.Client{Transport: &redirector{}}
	for _, ep := range []string{"http://api.localhost:8080/v1", "http://LLM.LOCALHOST/v1"} {
		for _, cfg := range []Config{
			{APIKey: fakeKey, BaseURL: ep, HTTPClient: opaque},
			{APIKey: fakeKey, FallbackURLs: []string{ep}, HTTPClient: opaque},
		} {
			_, err := New(cfg)
			var ce *ConfigError
			require.ErrorAs(t, err, &ce, ep)
			assert.Contains(t, ce.Problem, "HTTPClient.Transport to be an *http.Transport", ep)
		}
		_, err := New(Config{APIKey: fakeKey, BaseURL: ep, HTTPClient: &http.Client{Transport: &http.Transport{}}})
		assert.NoError(t, err, "through an *http.Transport")
	}
	for _, ep := range []string{"http://127.0.0.1:8080/v1", "http://[::1]:8080/v1", "http://localhost:8080/v1"} {
		c, err := New(Config{APIKey: fakeKey, BaseURL: ep, HTTPClient: opaque})
		require.NoError(t, err, ep)
		assert.Nil(t, c.http.Transport.(*transport).base.(*keyGuard).plain, "no loopback transport to derive")
	}
	c, err := New(Config{APIKey: fakeKey, BaseURL: "https://api.example.com/v1", FallbackURLs: []string{"http://LLM.localhost:8080/"}})
	require.NoError(t, err)
	g := c.http.Transport.(*transport).base.(*keyGuard)
	assert.Equal(t, []string{"llm.localhost:8080"}, g.plainHosts)
	assert.NotNil(t, g.plain, "derived from http.DefaultTransport")
}

// TestKeyScrubbedFromStatusLine has the server quote the key in the status
// line, as a reason phrase and as a malformed status code: neither the
// errors nor the retry log show it.
func TestKeyScrubbedFromStatusLine(t *testing.T) {
	cases := map[string]struct {
		response string
		check    func(t *testing.T, err error)
	}{
		"reason phrase, JSON body": {
			"HTTP/1.1 503 Bad key " + fakeKey + "\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n" + `{"error":{"message":"bad"}}`,
			func(t *testing.T, err error) {
				var apiErr *openai.APIError
				require.ErrorAs(t, err, &apiErr)
				assert.Equal(t, 503, apiErr.HTTPStatusCode)
				assert.Contains(t, apiErr.HTTPStatus, "503 Bad key [redacted]")
			},
		},
		"reason phrase, text body": {
			"HTTP/1.1 503 Bad key " + fakeKey + "\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad",
			func(t *testing.T, err error) {
				var reqErr *openai.RequestError
				require.ErrorAs(t, err, &reqErr)
				assert.Equal(t, 503, reqErr.HTTPStatusCode)
				assert.Contains(t, reqErr.HTTPStatus, "503 Bad key [redacted]")
			},
		},
		"malformed status code": {
			"HTTP/1.1 " + fakeKey + " oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
			func(t *testing.T, err error) {
				var re *RetryError
				require.ErrorAs(t, err, &re)
				assert.Contains(t, err.Error(), "malformed HTTP status code")
				assert.Contains(t, err.Error(), "[redacted]")
			},
		},
		"malformed status line": {
			"HTTP/1.1+" + fakeKey + "\r\n\r\n",
			func(t *testing.T, err error) {
				assert.Contains(t, err.Error(), "malformed HTTP response")
			},
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			var logs syncBuffer
			srv := newRecorder(t, c.response)
			cl, err := New(Config{APIKey: fakeKey, BaseURL: "http://" + srv.addr() + "/v1", MaxRetries: 1,
				Backoff: func() backoff.BackOff { return &backoff.ZeroBackOff{} }, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			require.NoError(t, err)
			defer cl.http.CloseIdleConnections()
			_, err = cl.Chat(context.Background(), "x")
			require.Error(t, err)
			c.check(t, err)
			for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err), logs.String()} {
				assert.NotContains(t, s, leakMarker)
			}
			assert.Contains(t, logs.String(), "llmdrain: retrying", "the retry was logged")
			conns, _ := srv.received()
			assert.Equal(t, 2, conns)
		})
	}
}

// escapedKey spells the key with JSON escapes: "-" as \u002d and "s" as
// \u0073, so that its bytes contain neither the key nor the leak marker.
var escapedKey = strings.NewReplacer("-", `\u002d`, "s", `\u0073`, "F", `\u0046`).Replace(fakeKey)

// TestKeyScrubbedFromEscapedJSON has the server quote the key in an error
// body with JSON escapes, which go-openai decodes into the message: in an
// error status's body, plain or streamed, and in a 2xx error envelope.
func TestKeyScrubbedFromEscapedJSON(t *testing.T) {
	require.NotContains(t, escapedKey, leakMarker)
	echo := `{"error":{"message":"Incorrect API key provided: ` + escapedKey + `","type":"invalid_request_error","param":"` + escapedKey + `","code":"` + escapedKey + `"}}`
	other := `{"detail":{"` + escapedKey + `":["` + escapedKey + `", 1.50, null, true]}}`
	for _, c := range []struct {
		name   string
		fault  llmtest.Fault
		stream bool
	}{
		{"401", llmtest.Status(401).WithBody(echo), false},
		{"401 stream", llmtest.Status(401).WithBody(echo), true},
		{"200 envelope", llmtest.Status(200).WithBody(echo), false},
		{"200 envelope stream", llmtest.Status(200).WithBody(echo), true},
		{"400 not an API error", llmtest.Status(400).WithBody(other), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			srv := newServer(t)
			srv.Script(c.fault)
			cl := newTestClient(t, srv, Config{})
			var err error
			if c.stream {
				_, err = soakStream(context.Background(), cl, "x", false)
			} else {
				_, err = cl.Chat(context.Background(), "x")
			}
			require.Error(t, err)
			out := &outputs{}
			out.err("err", err)
			for _, o := range out.all {
				assert.NotContains(t, o.text, leakMarker, o.label)
			}
			var apiErr *openai.APIError
			if errors.As(err, &apiErr) {
				assert.Equal(t, "Incorrect API key provided: [redacted]", apiErr.Message)
				assert.Equal(t, "invalid_request_error", apiErr.Type)
				require.NotNil(t, apiErr.Param)
				assert.Equal(t, "[redacted]", *apiErr.Param)
				assert.Equal(t, "[redacted]", apiErr.Code)
				return
			}
			var reqErr *openai.RequestError
			require.ErrorAs(t, err, &reqErr)
			assert.JSONEq(t, `{"detail":{"[redacted]":["[redacted]", 1.50, null, true]}}`, string(reqErr.Body))
		})
	}
}

func TestScrubJSON(t *testing.T) {
	key := secret(fakeKey)
	for _, b := range []string{
		`{"error":{"message":"no key here \u002d"}}`, // escapes, but no key: unchanged
		`not JSON ` + escapedKey,                     // shown as it is
		`{"a":"` + escapedKey + `"} trailing`,
		`{"a":"plain"}`,
	} {
		assert.Equal(t, b, string(scrubJSON([]byte(b), key)))
	}
	got := scrubJSON([]byte(`{"z":1e400,"a":["`+escapedKey+`",{"`+escapedKey+`x":0.10}],"<&>":"\u003c"}`), key)
	assert.Equal(t, `{"<&>":"<","a":["[redacted]",{"[redacted]x":0.10}],"z":1e400}`, string(got))
	assert.Equal(t, "", string(scrubJSON(nil, key)))
	assert.Equal(t, `"\u002d"`, string(scrubJSON([]byte(`"\u002d"`), "")))
}
