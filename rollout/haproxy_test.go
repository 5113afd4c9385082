package rollout

import (
	"encoding/csv"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// envHAProxy names the haproxy binary to use instead of the one on PATH.
const envHAProxy = "HAPROXY"

// findHAProxy returns the haproxy binary. Without one the test is skipped,
// unless $CI is set: CI installs haproxy, so there its absence is a
// failure, not a reason to pass silently.
func findHAProxy(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(envHAProxy); p != "" {
		path, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("$%s=%q: %v", envHAProxy, p, err)
		}
		return path
	}
	if p, err := exec.LookPath("haproxy"); err == nil {
		return p
	}
	// Debian installs it in /usr/sbin, which is not on every user's PATH.
	for _, p := range []string{"/usr/sbin/haproxy", "/usr/local/sbin/haproxy"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	const msg = "haproxy is not installed (apt-get install haproxy, or set $HAPROXY to its path)"
	if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
		t.Fatal(msg + "; CI is set, so this is a failure")
	}
	t.Skip(msg)
	return ""
}

// Load balancer timing. A replica is marked down after fall failed checks
// inter apart, so within about fall*inter plus one check's duration of its
// /readyz turning 503: well inside drainDelay.
const (
	checkInter = 100 * time.Millisecond
	checkFall  = 2 // not 1: one check slowed down by a busy machine must not empty the backend
	checkRise  = 1
)

// haproxyConfig is the load balancer of a scenario: one frontend, the
// replicas in one backend health-checked on /readyz (the readiness probe's
// role), and a stats listener the test reads servers' states from.
//
//   - timeouts are far longer than a stream (a few seconds), so the load
//     balancer never cuts one itself, and its keep-alive timeouts longer
//     than any idle gap of the load, so it never closes a client
//     connection as a request is sent on it;
//   - retries 2 with "option redispatch 1" and the default
//     "retry-on conn-failure": a request whose connection to a replica is
//     refused is tried on another replica. That covers only requests never
//     delivered; a request a replica accepted and then lost is not retried
//     (POSTs are not idempotent), exactly like a real load balancer or a
//     Kubernetes Service;
//   - X-Replica names the replica that answered, to tie a failure to a
//     restart; haproxy logs every request to its output, shown when the
//     test fails, with its termination state (SH--: the server closed
//     before answering, SD--: during the body). One kind of loss is not
//     logged: when a server closes without answering a request that came on
//     a client connection already used before, haproxy closes that client
//     connection without a response, the HTTP/1.1 way of saying "retry if
//     you can"; the client sees EOF.
func haproxyConfig(front, stats int, replicas []int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    maxconn 1000
    log stderr format raw local0 info

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout check 1s
    retries 2
    option redispatch 1
    retry-on conn-failure

frontend fe
    bind 127.0.0.1:%d
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    http-response set-header X-Replica %%s
    default-server check inter %dms fastinter %dms downinter %dms fall %d rise %d
`, front, checkInter.Milliseconds(), checkInter.Milliseconds(), checkInter.Milliseconds(), checkFall, checkRise)
	for i, port := range replicas {
		fmt.Fprintf(&b, "    server %s 127.0.0.1:%d\n", replicaName(i), port)
	}
	fmt.Fprintf(&b, `
listen stats
    bind 127.0.0.1:%d
    no log
    stats enable
    stats uri /stats
`, stats)
	return b.String()
}

func replicaName(i int) string { return fmt.Sprintf("r%d", i) }

// startHAProxy writes the config into dir, checks it, and runs haproxy in
// the foreground (-db: no daemon, no master process) as a child of the
// test.
func startHAProxy(t *testing.T, bin, dir, config string) *proc {
	t.Helper()
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-q", "-f", cfg).CombinedOutput(); err != nil {
		t.Fatalf("haproxy rejects the config: %v\n%s\n%s", err, out, config)
	}
	return startProc(t, dir, "haproxy", childEnv(), bin, "-db", "-f", cfg)
}

// server is one backend server as the stats page shows it.
type server struct {
	status string // check state: "UP", "DOWN", "UP 1/2" (failing, not yet down), ...
	cur    int    // requests it is handling now (scur)
}

func (s server) up() bool   { return s.status == "UP" }
func (s server) down() bool { return strings.HasPrefix(s.status, "DOWN") }

// servers reads the backend's servers from the stats page; nil if the page
// cannot be read.
func servers(c *http.Client, statsURL string) map[string]server {
	resp, err := c.Get(statsURL + ";csv")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	r := csv.NewReader(resp.Body)
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) == 0 {
		return nil
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[strings.TrimPrefix(name, "# ")] = i
	}
	px, sv, st, cur := col["pxname"], col["svname"], col["status"], col["scur"]
	if st == 0 || cur == 0 {
		return nil
	}
	out := map[string]server{}
	for _, row := range rows[1:] {
		if len(row) > max(st, cur) && row[px] == "replicas" && row[sv] != "BACKEND" {
			n, _ := strconv.Atoi(row[cur])
			out[row[sv]] = server{status: row[st], cur: n}
		}
	}
	return out
}
