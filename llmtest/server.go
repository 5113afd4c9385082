package llmtest

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Server is an OpenAI-compatible fake LLM API listening on a loopback port.
// It serves POST /v1/chat/completions (plain and streamed), GET /v1/models,
// GET /v1/models/{id} and POST /v1/embeddings, and answers anything else
// with an OpenAI-format 404. Create it with NewServer and release it with Close; the methods are
// safe for concurrent use.
type Server struct {
	// URL is the base URL to hand to an OpenAI client, for example
	// "http://127.0.0.1:41234/v1".
	URL string

	apiKey     string
	azure      bool // WithAzure
	chunkDelay time.Duration
	chaos      Chaos
	// models are the models served; nil: any. contextWindow bounds a
	// request's tokens; 0: no bound.
	models        []string
	contextWindow int

	http     *http.Server
	ctx      context.Context // parent of every request context; cancelled by Close
	cancel   context.CancelFunc
	served   chan struct{} // closed when http.Serve has returned
	handlers sync.WaitGroup
	conns    sync.WaitGroup
	closing  sync.Once

	connMu   sync.Mutex
	live     map[net.Conn]struct{} // connections neither closed nor hijacked
	accepted int                   // connections accepted, ever

	mu        sync.Mutex // guards everything below
	latency   time.Duration
	jitter    float64
	script    []Fault
	chaosRNG  *rand.Rand // separate from jitterRNG so latency settings never shift the chaos sequence
	jitterRNG *rand.Rand
	stats     Stats
	completed map[string]int
	history   map[string][]Exchange
	nextID    uint64
	limiter   limiter // WithRateLimit's buckets
	down      int     // SetDown's status; 0: up
}

// NewServer starts a Server on 127.0.0.1 at a fresh port (or at the WithAddr
// address) and returns once it is accepting connections. Like
// httptest.NewServer it panics if it cannot listen, since a test cannot
// proceed without it. The caller must call Close.
func NewServer(opts ...Option) *Server {
	cfg := config{addr: "127.0.0.1:0"}
	for _, opt := range opts {
		opt(&cfg)
	}
	if !cfg.seeded {
		cfg.seed = time.Now().UnixNano()
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		panic(fmt.Sprintf("llmtest: failed to listen on %s: %v", cfg.addr, err))
	}

	if cfg.models == nil && !cfg.anyModel {
		cfg.models = DefaultModels
	}
	if !cfg.windowSet {
		cfg.window = DefaultContextWindow
	}
	ctx, cancel := context.WithCancel(context.Background())
	url := "http://" + ln.Addr().String() + "/v1"
	if cfg.azure {
		url = "http://" + ln.Addr().String() // a resource's root
	}
	s := &Server{
		models:        cfg.models,
		contextWindow: cfg.window,
		URL:           url,
		apiKey:        cfg.apiKey,
		azure:         cfg.azure,
		chunkDelay:    cfg.chunkDelay,
		chaos:         cfg.chaos,
		ctx:           ctx,
		cancel:        cancel,
		served:        make(chan struct{}),
		live:          make(map[net.Conn]struct{}),
		latency:       cfg.latency,
		jitter:        cfg.jitter,
		chaosRNG:      rand.New(rand.NewPCG(uint64(cfg.seed), 1)),
		jitterRNG:     rand.New(rand.NewPCG(uint64(cfg.seed), 2)),
		completed:     make(map[string]int),
		history:       make(map[string][]Exchange),
		limiter:       newLimiter(cfg.rateLimit),
	}
	s.http = &http.Server{
		Handler:     http.HandlerFunc(s.route),
		BaseContext: func(net.Listener) context.Context { return ctx },
		ConnState:   s.trackConn,
		// Faults break connections on purpose; the resulting complaints
		// would only clutter the test output.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.served)
		_ = s.http.Serve(ln)
	}()
	return s
}

// Close shuts the server down: it stops listening (new connections are
// refused), cancels every request context so hung, delayed and streaming
// handlers return promptly without completing their response, closes every
// connection, and waits until all handlers and connection goroutines have
// returned. Close is idempotent and safe to call concurrently.
func (s *Server) Close() {
	s.closing.Do(func() {
		s.cancel()
		_ = s.http.Close()
		<-s.served
		// http.Server.Close can miss a connection accepted while it ran;
		// Serve has returned now, so this set is final.
		s.connMu.Lock()
		for c := range s.live {
			_ = c.Close()
		}
		s.connMu.Unlock()
		// Connections first: once their goroutines are gone no handler can
		// start, so the handlers' Wait cannot race with an Add.
		s.conns.Wait()
		s.handlers.Wait()
	})
}

// Script appends faults to the queue of scripted behaviours. Each
// well-formed, authorised chat completion request takes the next fault from
// the front of the queue, in arrival order; when the queue is empty requests
// succeed (or follow WithChaos). Requests the server rejects by itself (401
// for bad credentials, 400 for a malformed body, 413 for an oversized one)
// do not consume the script.
func (s *Server) Script(faults ...Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script = append(s.script, faults...)
}

// SetLatency replaces the latency set by WithLatency for requests that start
// waiting after the call. Negative values count as zero.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = max(d, 0)
}

// route dispatches every request; it is the only http.Handler of the server.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	s.handlers.Add(1)
	defer s.handlers.Done()

	if s.azure {
		var ok bool
		if r, ok = s.azureRequest(w, r); !ok {
			return
		}
	}
	if r.URL.Path == "/v1/chat/completions" && r.Method == http.MethodPost {
		s.serveChat(w, r)
		return
	}
	s.countOther()
	if !s.authorized(r) {
		if s.wait(r.Context(), 0) {
			respondFault(w, authFault(r))
		}
		return
	}
	if id, ok := strings.CutPrefix(r.URL.Path, "/v1/models/"); ok && id != "" {
		if r.Method == http.MethodGet {
			s.serveModel(w, r, id)
			return
		}
		s.respondAPIError(w, r, http.StatusMethodNotAllowed,
			fmt.Sprintf("Method %s not allowed for %s", r.Method, r.URL.Path))
		return
	}
	switch r.URL.Path {
	case "/v1/models":
		if r.Method == http.MethodGet {
			s.serveModels(w, r)
			return
		}
	case "/v1/embeddings":
		if r.Method == http.MethodPost {
			s.serveEmbeddings(w, r)
			return
		}
	case "/v1/chat/completions":
	default:
		s.respondAPIError(w, r, http.StatusNotFound,
			fmt.Sprintf("Invalid URL (%s %s)", r.Method, r.URL.Path))
		return
	}
	s.respondAPIError(w, r, http.StatusMethodNotAllowed,
		fmt.Sprintf("Method %s not allowed for %s", r.Method, r.URL.Path))
}

func (s *Server) authorized(r *http.Request) bool {
	if s.azure {
		return s.apiKey == "" || r.Header.Get("api-key") == s.apiKey
	}
	return s.apiKey == "" || r.Header.Get("Authorization") == "Bearer "+s.apiKey
}

// deploymentKey is the context key of an Azure request's deployment.
type deploymentKey struct{}

// azureRequest maps an Azure OpenAI request to the server's own paths:
// /openai/deployments/{d}/{rest}?api-version=V becomes /v1/{rest}, with d
// in the request's context as the model. It answers what Azure would
// refuse (no api-version, another path) itself and reports false.
func (s *Server) azureRequest(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	rest, ok := strings.CutPrefix(r.URL.Path, "/openai/deployments/")
	deployment, rest, found := strings.Cut(rest, "/")
	if !ok || !found || deployment == "" || rest == "" || r.URL.Query().Get("api-version") == "" {
		s.countOther()
		respondFault(w, apiFault(http.StatusNotFound, "Resource not found", "", "404"))
		return r, false
	}
	r2 := r.WithContext(context.WithValue(r.Context(), deploymentKey{}, deployment))
	u := *r.URL
	u.Path, u.RawPath = "/v1/"+rest, ""
	r2.URL = &u
	return r2, true
}

// deployment returns the Azure deployment r was sent to, or "".
func deployment(r *http.Request) string {
	d, _ := r.Context().Value(deploymentKey{}).(string)
	return d
}

// trackConn keeps the set of live connections for Close.
func (s *Server) trackConn(c net.Conn, state http.ConnState) {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	switch state {
	case http.StateNew:
		s.live[c] = struct{}{}
		s.accepted++
		s.conns.Add(1)
	case http.StateHijacked, http.StateClosed:
		// A hijacked connection is closed by the handler that took it.
		if _, ok := s.live[c]; ok {
			delete(s.live, c)
			s.conns.Done()
		}
	}
}

// nextFault picks the behaviour for a chat request: the head of the script,
// else a chaos draw, else success. It counts the request as a stream and as
// a fault where that applies.
func (s *Server) nextFault(prompt string, stream bool) Fault {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var f Fault
	switch {
	case len(s.script) > 0:
		f = s.script[0]
		s.script[0] = Fault{} // drop the header map reference
		s.script = s.script[1:]
	case s.chaos.enabled():
		f = s.chaos.draw(s.chaosRNG)
	}
	if stream {
		s.stats.Streams++
	}
	if !f.succeeds() {
		s.stats.Faults++
	}
	s.remember(prompt, f.exchange(now))
	return f
}

// wait sleeps for the server latency plus extra. It reports false if the
// request was cancelled first, by the client or by Close.
func (s *Server) wait(ctx context.Context, extra time.Duration) bool {
	return sleep(ctx, s.nextLatency()+extra)
}

// nextLatency is the current latency with jitter applied.
func (s *Server) nextLatency() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.latency
	if s.jitter > 0 && d > 0 {
		d = time.Duration(float64(d) * (1 + s.jitter*(2*s.jitterRNG.Float64()-1)))
	}
	return d
}
