package llmtest

import (
	"context"
	"net"
	"net/http"
	"time"
)

// sleep waits for d unless ctx ends first; it reports whether the full wait
// elapsed. Every wait in the server goes through it so that Close and client
// cancellation interrupt them all.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// abort takes the connection away from net/http and closes it, so that
// whatever was flushed so far is all the client ever gets: returning from
// the handler instead would let net/http complete the response. With rst the
// close sends a TCP RST instead of a FIN.
func abort(w http.ResponseWriter, rst bool) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not an HTTP/1 connection; this is net/http's own way to drop it.
		panic(http.ErrAbortHandler)
	}
	if tcp, ok := conn.(*net.TCPConn); ok && rst {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}
