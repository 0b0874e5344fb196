// Package client is how Keel processes call their peers: by logical service
// name, never by address. A [Transport] resolves the name in each request's
// URL host through a [discovery.Resolver] and balances calls over the
// healthy instances, on pooled h2c connections.
//
//	peers := client.New(resolver)
//	users := client.Connect(peers, "user", userv1connect.NewUserServiceClient)
package client

import (
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/internal/discovery"
)

// Transport is an [http.RoundTripper] that sends each request to one
// instance of the service named by the request URL's host, chosen round
// robin among the instances the resolver returns. It is safe for concurrent
// use.
type Transport struct {
	resolver discovery.Resolver
	h2c      *http.Transport
	next     atomic.Uint64
}

// NewTransport returns a transport that resolves through resolver and talks
// h2c (HTTP/2 without TLS) to the instances.
func NewTransport(resolver discovery.Resolver) *Transport {
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	return &Transport{
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
	inst, err := t.Pick(req.URL.Host)
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
	return t.h2c.RoundTrip(&out)
}

// Pick chooses the instance of service the next call goes to.
func (t *Transport) Pick(service string) (discovery.Instance, error) {
	instances, err := t.resolver.Instances(service)
	if err != nil {
		return discovery.Instance{}, fmt.Errorf("resolve %q: %w", service, err)
	}
	n := t.next.Add(1)
	return instances[n%uint64(len(instances))], nil
}

// CloseIdleConnections closes pooled connections that carry no call.
func (t *Transport) CloseIdleConnections() {
	t.h2c.CloseIdleConnections()
}

// Peers hands out clients for services by logical name. Create it with
// [New]; it is safe for concurrent use.
type Peers struct {
	transport *Transport
	http      *http.Client
}

// New returns peers resolved through resolver.
func New(resolver discovery.Resolver) *Peers {
	t := NewTransport(resolver)
	return &Peers{transport: t, http: &http.Client{Transport: t}}
}

// HTTPClient is the client to pass to generated Connect client constructors.
func (p *Peers) HTTPClient() *http.Client { return p.http }

// Transport is the balancing transport behind [Peers.HTTPClient].
func (p *Peers) Transport() *Transport { return p.transport }

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
