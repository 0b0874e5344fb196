// Package client is how Keel processes call their peers: by logical service
// name, never by address. A [Transport] resolves the name in each request's
// URL host through a [discovery.Resolver] and balances calls over the
// healthy instances, on pooled connections (HTTP/1.1 keep-alive for unary
// Connect calls, h2c for the rest).
//
//	peers := client.New(resolver)
//	users := client.Connect(peers, "user", userv1connect.NewUserServiceClient)
package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/internal/discovery"
)

// Transport is an [http.RoundTripper] that sends each request to one
// instance of the service named by the request URL's host, chosen round
// robin among the instances the resolver returns. It is safe for concurrent
// use.
//
// When an instance cannot be reached (connection refused, reset before an
// answer), the transport sets it aside for [EjectFor] and tries another
// instance, up to [MaxAttempts] in all, as long as the call is safe to send
// again: its body can be replayed ([http.Request.GetBody] or no body) and
// either it never reached the instance (a failed dial) or it is marked
// idempotent with [Idempotent].
type Transport struct {
	resolver discovery.Resolver
	h2c      *http.Transport // gRPC, gRPC-Web and streams
	h1       *http.Transport // Connect unary calls
	next     atomic.Uint64
	ejected  sync.Map // instance address -> time.Time it may be picked again
}

// MaxAttempts is how many instances one call may be sent to.
const MaxAttempts = 3

// EjectFor is how long an instance that could not be reached is passed
// over, while other instances remain. Discovery removes a dead instance
// once its health check fails; this covers the seconds before that.
const EjectFor = 5 * time.Second

type idempotentKey struct{}

// Idempotent marks the calls made with the returned context as safe to
// send again after a transport failure, as calls to NO_SIDE_EFFECTS and
// IDEMPOTENT methods are.
func Idempotent(ctx context.Context) context.Context {
	return context.WithValue(ctx, idempotentKey{}, true)
}

func isIdempotent(req *http.Request) bool {
	if req.Method == http.MethodGet || req.Method == http.MethodHead {
		return true
	}
	v, _ := req.Context().Value(idempotentKey{}).(bool)
	return v
}

// NewTransport returns a transport that resolves through resolver.
//
// Unary Connect calls (a POST of application/proto or application/json, or
// a GET) travel over a pool of HTTP/1.1 keep-alive connections: measured
// here (BenchmarkProxyUnary in edge), that path answers a small call in
// about half the time of an HTTP/2 stream through Go's stack. gRPC,
// gRPC-Web and Connect streams, which need HTTP/2 or trailers, share an h2c
// (HTTP/2 without TLS) connection per instance.
func NewTransport(resolver discovery.Resolver) *Transport {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	return &Transport{
		h1: &http.Transport{
			DialContext: (&net.Dialer{
				Timeout:   5 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 256,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
		resolver: resolver,
		h2c: &http.Transport{
			Protocols: protocols,
			DialContext: (&net.Dialer{
				Timeout:   5 * time.Second,
				KeepAlive: 30 * time.Second,
			}).DialContext,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
			HTTP2: &http.HTTP2Config{
				MaxReadFrameSize: 1 << 20,
				PingTimeout:      5 * time.Second,
				SendPingTimeout:  30 * time.Second,
			},
			DisableCompression: true,
		},
	}
}

// RoundTrip implements [http.RoundTripper].
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	var tried []string
	for attempt := 1; ; attempt++ {
		inst, err := t.pick(req.URL.Host, tried)
		if err != nil {
			if req.Body != nil {
				_ = req.Body.Close()
			}
			return nil, err
		}
		out := *req // shallow copy: RoundTrip must not modify the caller's request
		u := *req.URL
		u.Host = inst.Addr
		out.URL = &u
		out.Host = ""
		if attempt > 1 && req.GetBody != nil {
			if out.Body, err = req.GetBody(); err != nil {
				return nil, fmt.Errorf("replay request body: %w", err)
			}
		}
		res, err := t.transportFor(req).RoundTrip(&out)
		if err == nil {
			return res, nil
		}
		unsent := isDialError(err)
		t.eject(inst.Addr)
		tried = append(tried, inst.Addr)
		if attempt >= MaxAttempts || !replayable || req.Context().Err() != nil || !(unsent || isIdempotent(req)) {
			return nil, fmt.Errorf("%s at %s: %w", req.URL.Host, inst.Addr, err)
		}
	}
}

// transportFor picks HTTP/1.1 for unary Connect calls and h2c for the rest.
func (t *Transport) transportFor(req *http.Request) *http.Transport {
	if req.Method == http.MethodGet {
		return t.h1
	}
	ct := req.Header["Content-Type"]
	if len(ct) == 1 && (strings.HasPrefix(ct[0], "application/proto") || strings.HasPrefix(ct[0], "application/json")) {
		return t.h1
	}
	return t.h2c
}

// pick chooses round robin among the instances of service, passing over
// those tried already in this call and those recently unreachable, unless
// that leaves none.
func (t *Transport) pick(service string, tried []string) (discovery.Instance, error) {
	instances, err := t.resolver.Instances(service)
	if err != nil {
		return discovery.Instance{}, fmt.Errorf("resolve %q: %w", service, err)
	}
	n := t.next.Add(1)
	now := time.Now()
	fallback := -1
	for i := range instances {
		inst := instances[(n+uint64(i))%uint64(len(instances))]
		if slices.Contains(tried, inst.Addr) {
			continue
		}
		if until, ok := t.ejected.Load(inst.Addr); ok {
			if now.Before(until.(time.Time)) {
				if fallback < 0 {
					fallback = int((n + uint64(i)) % uint64(len(instances)))
				}
				continue
			}
			t.ejected.Delete(inst.Addr)
		}
		return inst, nil
	}
	if fallback >= 0 {
		return instances[fallback], nil
	}
	return instances[n%uint64(len(instances))], nil
}

func (t *Transport) eject(addr string) {
	t.ejected.Store(addr, time.Now().Add(EjectFor))
}

// Eject sets aside the instance at addr for [EjectFor], as the transport
// does itself when it cannot reach one: for callers that saw an instance
// fail in the middle of an answer.
func (t *Transport) Eject(addr string) {
	t.eject(addr)
}

// isDialError reports whether err happened before the request could reach
// the instance, so sending it elsewhere cannot repeat its effect.
func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// CloseIdleConnections closes pooled connections that carry no call.
func (t *Transport) CloseIdleConnections() {
	t.h2c.CloseIdleConnections()
	t.h1.CloseIdleConnections()
}

// Peers hands out clients for services by logical name. Create it with
// [New]; it is safe for concurrent use.
type Peers struct {
	http *http.Client
}

// New returns peers resolved through resolver.
func New(resolver discovery.Resolver) *Peers {
	t := NewTransport(resolver)
	return &Peers{http: &http.Client{Transport: t}}
}

// HTTPClient is the client to pass to generated Connect client constructors.
func (p *Peers) HTTPClient() *http.Client { return p.http }

// BaseURL is the base URL for service: its logical name as the host.
func (p *Peers) BaseURL(service string) string { return "http://" + service }

// Connect builds a generated Connect client for service, e.g.
// Connect(peers, "user", userv1connect.NewUserServiceClient).
func Connect[C any](
	p *Peers,
	service string,
	newClient func(connect.HTTPClient, string, ...connect.ClientOption) C,
	opts ...connect.ClientOption,
) C {
	return newClient(p.http, p.BaseURL(service), opts...)
}
