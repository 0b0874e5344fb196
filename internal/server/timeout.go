package server

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/keelplatform/keel/internal/wire"
)

// capTimeout holds every call to at most the deadline in max (ns): a
// caller's timeout header asking for more is rewritten to max before
// anything reads it, so connect-go's handlers, the edge's proxy and the
// calls they make downstream all see the capped deadline. The
// connection's read deadline is set to the call's, so a client that
// trickles its request body is cut when the call's time is up rather
// than holding the connection; a unary Connect call that asks for no
// deadline may take at most max to send its request (its deadline stays
// the handler's default). A malformed header is left for the handler to
// refuse, and a gRPC or streaming call without a timeout keeps none: a
// stream may be meant to last.
func capTimeout(next http.Handler, max *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		limit := time.Duration(max.Load())
		d, ok, err := wire.ParseTimeout(r.Header)
		switch {
		case err != nil || r.Method == http.MethodOptions:
			ok = false
		case ok && d > limit:
			d = limit
			wire.WriteTimeout(r.Header, d)
		case !ok && wire.ConnectUnary(r):
			d, ok = limit, true
		}
		if ok && d > 0 && r.Body != nil && r.Body != http.NoBody {
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
		}
		next.ServeHTTP(w, r)
	})
}
