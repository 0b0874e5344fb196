package edge

import (
	"net"
	"net/http"
	"net/netip"
	"strings"

	"github.com/keelplatform/keel/internal/shed"
)

// hopHeaders are connection-level headers that must not be forwarded
// (RFC 9110, section 7.6.1). TE is handled on its own: "trailers" is kept,
// since gRPC servers require it.
var hopHeaders = map[string]bool{
	"Connection":          true,
	"Proxy-Connection":    true,
	"Keep-Alive":          true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// identityPrefix starts the headers that carry identity the edge vouches
// for (the authenticated user, say): a caller must never set them itself.
const identityPrefix = "Keel-"

// forwardHeaders turns the caller's request headers h into the upstream
// request's, in place: it drops hop-by-hop headers and those the
// Connection header names, Keel-* headers (but for a caller lowering its
// own priority to low), keeps "TE: trailers", and sets X-Forwarded-For
// from the caller's address as trusted says.
func forwardHeaders(h http.Header, remoteAddr string, trusted *trustedProxies) {
	// Read before Connection is applied: HTTP/1.1 senders must name TE in
	// Connection, and "trailers" is still to be kept.
	keepTrailers := false
	for _, v := range h["Te"] {
		for token := range strings.SplitSeq(v, ",") {
			if name, _, _ := strings.Cut(token, ";"); strings.EqualFold(strings.TrimSpace(name), "trailers") {
				keepTrailers = true
			}
		}
	}
	if conn := h["Connection"]; len(conn) > 0 {
		for _, v := range conn {
			for name := range strings.SplitSeq(v, ",") {
				if name = strings.TrimSpace(name); name != "" {
					delete(h, http.CanonicalHeaderKey(name))
				}
			}
		}
	}
	for key := range h {
		if hopHeaders[key] {
			delete(h, key)
			continue
		}
		if strings.HasPrefix(key, identityPrefix) {
			if key == shed.PriorityHeader && len(h[key]) == 1 && strings.EqualFold(h[key][0], shed.Low) {
				h[key] = []string{shed.Low}
				continue
			}
			delete(h, key)
		}
	}
	if keepTrailers {
		h["Te"] = []string{"trailers"}
	}
	if host, _, err := net.SplitHostPort(remoteAddr); err == nil {
		h["X-Forwarded-For"] = []string{trusted.forwardedFor(h["X-Forwarded-For"], host)}
	} else {
		delete(h, "X-Forwarded-For")
	}
}

// trustedProxies are the networks of proxies in front of the edge (a
// cloud load balancer) whose X-Forwarded-For is believed. A nil
// *trustedProxies trusts none: the edge is the front door.
type trustedProxies struct {
	prefixes []netip.Prefix
}

// newTrustedProxies parses CIDR prefixes ("10.0.0.0/8") or addresses.
func newTrustedProxies(list []string) (*trustedProxies, error) {
	if len(list) == 0 {
		return nil, nil
	}
	t := &trustedProxies{}
	for _, s := range list {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			addr, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, err
			}
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		t.prefixes = append(t.prefixes, p.Masked())
	}
	return t, nil
}

// trusts reports whether host is the address of a trusted proxy.
func (t *trustedProxies) trusts(host string) bool {
	if t == nil {
		return false
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	addr = addr.Unmap()
	for _, p := range t.prefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// forwardedFor is the X-Forwarded-For the upstream gets: the chain the
// caller sent followed by the caller, when the caller is a trusted proxy;
// the caller alone otherwise, since anyone else may write anything there.
func (t *trustedProxies) forwardedFor(prior []string, host string) string {
	if len(prior) == 0 || !t.trusts(host) {
		return host
	}
	return strings.Join(prior, ", ") + ", " + host
}
