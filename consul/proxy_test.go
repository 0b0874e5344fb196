package consul_test

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// tcpProxy forwards loopback TCP connections to an upstream address until
// frozen: then it keeps every connection open, and accepts new ones, but
// forwards nothing either way, as a peer behind a half-open connection
// would. Recover forwards new connections again; those open while frozen
// stay silent for good, as connections to a vanished host do.
type tcpProxy struct {
	ln       net.Listener
	upstream string
	done     chan struct{}
	wg       sync.WaitGroup
	// swallowed counts bytes read while frozen, or on a dead connection.
	swallowed atomic.Int64

	mu     sync.Mutex
	thawed chan struct{} // closed while forwarding
	links  map[*link]struct{}
}

// link is one proxied connection and its upstream connection.
type link struct {
	down, up net.Conn
	// dead links never forward again.
	dead atomic.Bool
}

// startTCPProxy starts a proxy to upstream, closed when t ends.
func startTCPProxy(t *testing.T, upstream string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	thawed := make(chan struct{})
	close(thawed)
	p := &tcpProxy{ln: ln, upstream: upstream, done: make(chan struct{}), thawed: thawed, links: map[*link]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's address, host:port.
func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

// Freeze stops forwarding, in both directions, on every connection.
func (p *tcpProxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
		p.thawed = make(chan struct{})
	default:
	}
}

// Recover forwards new connections again. The connections open now never
// forward again.
func (p *tcpProxy) Recover() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for l := range p.links {
		l.dead.Store(true)
	}
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
}

// Swallowed returns how many bytes reached the proxy and went no further.
func (p *tcpProxy) Swallowed() int64 { return p.swallowed.Load() }

func (p *tcpProxy) serve() {
	defer p.wg.Done()
	for {
		down, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.upstream)
		if err != nil {
			_ = down.Close()
			continue
		}
		l := &link{down: down, up: up}
		p.mu.Lock()
		select {
		case <-p.done:
			p.mu.Unlock()
			_, _ = down.Close(), up.Close()
			return
		default:
		}
		p.links[l] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pump(l, up, down)
		go p.pump(l, down, up)
	}
}

// pump copies src to dst, holding what it reads while the proxy is frozen
// and dropping it once the link is dead.
func (p *tcpProxy) pump(l *link, dst, src net.Conn) {
	defer p.wg.Done()
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.pass(l, n) {
			return
		}
		if n > 0 {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// pass waits until n bytes read on l may be forwarded; it reports false
// when they never will, once the proxy closes.
func (p *tcpProxy) pass(l *link, n int) bool {
	p.mu.Lock()
	thawed := p.thawed
	p.mu.Unlock()
	if !l.dead.Load() {
		select {
		case <-thawed:
			return true
		default:
		}
	}
	p.swallowed.Add(int64(n))
	select {
	case <-thawed:
	case <-p.done:
		return false
	}
	if l.dead.Load() {
		<-p.done
		return false
	}
	return true
}

func (p *tcpProxy) close() {
	p.mu.Lock()
	close(p.done)
	for l := range p.links {
		_, _ = l.down.Close(), l.up.Close()
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.wg.Wait()
}

// agentProxy is an HTTP reverse proxy on loopback in front of a Consul
// agent that can hold chosen calls, before or after the agent got them,
// until released: an agent, or a network path, stalled for those calls
// only.
type agentProxy struct {
	srv   *httptest.Server
	proxy *httputil.ReverseProxy

	mu       sync.Mutex
	holdings []*holding
	seen     map[string]int // requests received, by "METHOD /path"
}

// holding is one rule of an agentProxy about which calls to hold.
type holding struct {
	match func(*http.Request) bool
	// answer makes the proxy forward the call and hold its answer instead.
	answer  bool
	release chan struct{}
	once    sync.Once
	// held receives "METHOD /path" of each call as the proxy starts
	// holding it (with answer, once the agent answered).
	held chan string
	// forwarded receives, for each call released, the agent's status code,
	// or 0 when its client had given up.
	forwarded chan int
}

// startAgentProxy starts a proxy to the agent at addr, closed when t ends.
func startAgentProxy(t *testing.T, addr string) *agentProxy {
	t.Helper()
	target, err := url.Parse("http://" + addr)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	// A held request whose client gave up is expected: no log line.
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	p := &agentProxy{proxy: rp, seen: map[string]int{}}
	p.srv = httptest.NewServer(http.HandlerFunc(p.serveHTTP))
	t.Cleanup(func() {
		p.mu.Lock()
		holdings := p.holdings
		p.mu.Unlock()
		for _, h := range holdings {
			h.Release()
		}
		p.srv.Close()
	})
	return p
}

// client returns a Consul client that goes through the proxy.
func (p *agentProxy) client(t *testing.T) *api.Client {
	t.Helper()
	client, err := api.NewClient(&api.Config{Address: p.srv.Listener.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// hold makes the proxy hold, unforwarded, the calls match accepts until
// the holding is released. match is called once per call, in the order
// holdings were made, until one accepts it.
func (p *agentProxy) hold(match func(*http.Request) bool) *holding {
	return p.add(&holding{match: match})
}

// holdAnswer is hold, but the proxy forwards the call and holds the
// agent's answer: the agent has applied the call, its caller does not
// know yet.
func (p *agentProxy) holdAnswer(match func(*http.Request) bool) *holding {
	return p.add(&holding{match: match, answer: true})
}

func (p *agentProxy) add(h *holding) *holding {
	h.release = make(chan struct{})
	h.held = make(chan string, 16)
	h.forwarded = make(chan int, 16)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.holdings = append(p.holdings, h)
	return h
}

// Release stops holding calls and lets those held go on.
func (h *holding) Release() { h.once.Do(func() { close(h.release) }) }

// count returns how many requests for "METHOD /path" the proxy received.
func (p *agentProxy) count(what string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[what]
}

func (p *agentProxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	what := r.Method + " " + r.URL.Path
	var h *holding
	p.mu.Lock()
	p.seen[what]++
	for _, c := range p.holdings {
		select {
		case <-c.release:
			continue
		default:
		}
		if c.match(r) {
			h = c
			break
		}
	}
	p.mu.Unlock()
	switch {
	case h == nil:
		p.proxy.ServeHTTP(w, r)
	case h.answer:
		rec := httptest.NewRecorder()
		p.proxy.ServeHTTP(rec, r)
		h.held <- what
		select {
		case <-h.release:
		case <-r.Context().Done():
			h.forwarded <- 0
			return
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		_, _ = w.Write(rec.Body.Bytes())
		h.forwarded <- rec.Code
	default:
		h.held <- what
		select {
		case <-h.release:
		case <-r.Context().Done():
			h.forwarded <- 0
			return
		}
		rec := &statusRecorder{ResponseWriter: w}
		p.proxy.ServeHTTP(rec, r)
		h.forwarded <- rec.status
	}
}

// waitHeld waits until the proxy holds a call and returns which.
func (h *holding) waitHeld(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case what := <-h.held:
		return what
	case <-time.After(timeout):
		t.Fatalf("no call held within %v", timeout)
		return ""
	}
}

// waitForwarded waits until a released call got the agent's answer and
// returns its status code.
func (h *holding) waitForwarded(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case status := <-h.forwarded:
		return status
	case <-time.After(timeout):
		t.Fatalf("released call not answered within %v", timeout)
		return 0
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// within runs f and fails t unless it returns within timeout; it returns
// how long f took and its error.
func within(t *testing.T, timeout time.Duration, what string, f func() error) (time.Duration, error) {
	t.Helper()
	began := time.Now()
	result := make(chan error, 1)
	go func() { result <- f() }()
	select {
	case err := <-result:
		return time.Since(began), err
	case <-time.After(timeout):
		t.Fatalf("%s: still running after %v", what, timeout)
		return 0, errors.New("unreachable")
	}
}
