package edge

import (
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/keelplatform/keel/internal/callpolicy"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/ratelimit"
)

// RateLimits limit how often each caller may call the edge: per
// authenticated user, or per client address for anonymous calls, and per
// group of methods.
type RateLimits struct {
	// Groups are the limits, by group name. A method (or a whole service)
	// is in at most one group; the group named "default", which lists no
	// methods, limits every method in none of the others. No groups:
	// nothing is limited. Dynamic. Default none.
	Groups map[string]RateGroup `yaml:"groups"`
	// RedisAddr is the host:port of a Redis (7 or newer) that every edge
	// instance shares its limits on, by GCRA in a Lua script; empty: each
	// edge limits in its own memory. While Redis is unreachable each edge
	// limits in its own memory. The credentials come from
	// KEEL_REDIS_USERNAME and KEEL_REDIS_PASSWORD. Static. Default "".
	RedisAddr string `yaml:"redis_addr" keel:"static"`
	// KeyPrefix starts every key written in Redis. Static. Default
	// "keel:ratelimit:".
	KeyPrefix string `yaml:"key_prefix" keel:"static"`
	// Timeout bounds each Redis call, 1ms to 1s; a slower Redis counts as
	// unreachable. Static. Default 50ms.
	Timeout time.Duration `yaml:"timeout" keel:"static"`
	// MaxKeys bounds the callers remembered in process memory, 1000 to
	// 10,000,000: past it the oldest state is dropped. Static. Default
	// 100,000.
	MaxKeys int `yaml:"max_keys" keel:"static"`
}

// RateGroup is one rate limit and the methods it applies to.
type RateGroup struct {
	// Methods are full method names ("shop.user.v1.UserService.Login";
	// "shop.user.v1.UserService/Login" is read the same) or whole services
	// ("shop.user.v1.UserService"). The group "default" lists none.
	Methods []string `yaml:"methods"`
	// Rate is how many calls each caller may make per Per, 1 to 1,000,000.
	Rate int `yaml:"rate"`
	// Per is the period of Rate, 1ms to 24h.
	Per time.Duration `yaml:"per"`
	// Burst is how many calls a caller may make at once after a quiet
	// spell, 1 to 1,000,000; 0 means Rate.
	Burst int `yaml:"burst"`
}

// Canary sends a share of the calls to one service to the instances of
// one version (the "version" in their discovery metadata, KEEL_VERSION).
type Canary struct {
	// Version is the canary instances' version.
	Version string `yaml:"version"`
	// Weight is the percentage of calls the canary gets, 0 to 100.
	Weight float64 `yaml:"weight"`
	// Sticky keeps each user (by address when anonymous) on one side: the
	// side is a hash of the caller, so raising Weight moves callers from
	// stable to canary only.
	Sticky bool `yaml:"sticky"`
}

// Fault is a fault the edge injects into the calls to a method or
// service, for chaos drills.
type Fault struct {
	// Delay holds calls this long before they go on (never past the
	// caller's deadline), 0 to 1m.
	Delay time.Duration `yaml:"delay"`
	// DelayPercent is the percentage of calls delayed, 0 to 100.
	DelayPercent float64 `yaml:"delay_percent"`
	// AbortPercent is the percentage of calls answered at the edge with
	// AbortCode, never sent upstream, 0 to 100.
	AbortPercent float64 `yaml:"abort_percent"`
	// AbortCode is the Connect code of aborted calls, e.g. unavailable.
	// Default unavailable.
	AbortCode string `yaml:"abort_code"`
}

// DefaultRateLimits returns the documented defaults: no limits.
func DefaultRateLimits() RateLimits {
	return RateLimits{KeyPrefix: "keel:ratelimit:", Timeout: 50 * time.Millisecond, MaxKeys: 100_000}
}

// defaultGroup is the name of the group of the methods in no other.
const defaultGroup = "default"

// UnmarshalYAML decodes a group, refusing keys it does not have.
func (g *RateGroup) UnmarshalYAML(n *yaml.Node) error {
	type plain RateGroup
	return strictDecode(n, (*plain)(g), "methods", "rate", "per", "burst")
}

// UnmarshalYAML decodes a canary, refusing keys it does not have.
func (c *Canary) UnmarshalYAML(n *yaml.Node) error {
	type plain Canary
	return strictDecode(n, (*plain)(c), "version", "weight", "sticky")
}

// UnmarshalYAML decodes a fault, refusing keys it does not have.
func (f *Fault) UnmarshalYAML(n *yaml.Node) error {
	type plain Fault
	return strictDecode(n, (*plain)(f), "delay", "delay_percent", "abort_percent", "abort_code")
}

// strictDecode decodes the mapping n into out, refusing keys not in known.
func strictDecode(n *yaml.Node, out any, known ...string) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("want a mapping with keys %s", strings.Join(known, ", "))
	}
	for i := 0; i < len(n.Content); i += 2 {
		if k := n.Content[i].Value; !slices.Contains(known, k) {
			return fmt.Errorf("unknown key %q (want %s)", k, strings.Join(known, ", "))
		}
	}
	return n.Decode(out)
}

// methodName turns "pkg.Service/Method" into the full name
// "pkg.Service.Method"; other names are returned as they are.
func methodName(s string) string { return strings.Replace(s, "/", ".", 1) }

// validName reports whether s has the shape of a full service or method
// name: package segments, then a name, dotted.
func validName(s string) bool {
	if strings.Count(s, ".") < 2 || strings.ContainsAny(s, "/ ") {
		return false
	}
	for part := range strings.SplitSeq(s, ".") {
		if part == "" {
			return false
		}
	}
	return true
}

// validateTraffic reports every bad key of the traffic settings.
func validateTraffic(s Settings) []error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, &config.KeyError{Key: key, Err: fmt.Errorf(format, args...)})
	}
	rl := s.RateLimits
	if rl.RedisAddr != "" {
		if _, _, err := net.SplitHostPort(rl.RedisAddr); err != nil {
			bad("rate_limits/redis_addr", "want host:port or empty (in process): %v", err)
		}
	}
	if rl.KeyPrefix == "" {
		bad("rate_limits/key_prefix", "must be set")
	}
	if rl.Timeout < time.Millisecond || rl.Timeout > time.Second {
		bad("rate_limits/timeout", "%s is out of range [1ms, 1s]", rl.Timeout)
	}
	if rl.MaxKeys < 1000 || rl.MaxKeys > 10_000_000 {
		bad("rate_limits/max_keys", "%d is out of range [1000, 10000000]", rl.MaxKeys)
	}
	owner := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(rl.Groups)) {
		g := rl.Groups[name]
		key := "rate_limits/groups/" + name
		if g.Rate < 1 || g.Rate > 1_000_000 {
			bad(key, "rate %d is out of range [1, 1000000]", g.Rate)
		}
		if g.Per < time.Millisecond || g.Per > 24*time.Hour {
			bad(key, "per %s is out of range [1ms, 24h]", g.Per)
		}
		if g.Burst < 0 || g.Burst > 1_000_000 {
			bad(key, "burst %d is out of range [0 (rate), 1000000]", g.Burst)
		}
		if g.Rate >= 1 && g.Per >= time.Millisecond && g.Per/time.Duration(g.Rate) < time.Microsecond {
			bad(key, "more than one call per microsecond (%d per %s)", g.Rate, g.Per)
		}
		if name == defaultGroup {
			if len(g.Methods) > 0 {
				bad(key, "the default group applies to every method in no other group: it lists no methods")
			}
			continue
		}
		if len(g.Methods) == 0 {
			bad(key, "lists no methods (only the group %q applies to all the others)", defaultGroup)
		}
		for _, m := range g.Methods {
			full := methodName(m)
			if !validName(full) {
				bad(key, "method %q: want a full method name (shop.user.v1.UserService.Login) or service name (shop.user.v1.UserService)", m)
				continue
			}
			if other, ok := owner[full]; ok && other != name {
				bad(key, "method %s is in group %s too: a method is in at most one group", full, other)
			}
			owner[full] = name
		}
	}
	for service, c := range s.Canary {
		key := "canary/" + service
		if c.Version == "" {
			bad(key, "version must be set")
		}
		if !(c.Weight >= 0 && c.Weight <= 100) {
			bad(key, "weight %g is out of range [0, 100]", c.Weight)
		}
	}
	for name, f := range s.Faults {
		key := "faults/" + name
		if !validName(name) {
			bad(key, "want a full method name (shop.inventory.v1.InventoryService.GetItem) or service name (shop.inventory.v1.InventoryService)")
		}
		if f.Delay < 0 || f.Delay > time.Minute {
			bad(key, "delay %s is out of range [0s, 1m]", f.Delay)
		}
		if !(f.DelayPercent >= 0 && f.DelayPercent <= 100) {
			bad(key, "delay_percent %g is out of range [0, 100]", f.DelayPercent)
		}
		if !(f.AbortPercent >= 0 && f.AbortPercent <= 100) {
			bad(key, "abort_percent %g is out of range [0, 100]", f.AbortPercent)
		}
		if _, err := abortCode(f.AbortCode); err != nil {
			bad(key, "%v", err)
		}
	}
	return errs
}

// abortCode parses a fault's abort code; empty is unavailable.
func abortCode(s string) (connect.Code, error) {
	if s == "" {
		return connect.CodeUnavailable, nil
	}
	var c connect.Code
	if err := c.UnmarshalText([]byte(s)); err != nil || c == 0 {
		return 0, fmt.Errorf("abort_code %q: want a Connect code such as unavailable, internal or resource_exhausted", s)
	}
	return c, nil
}

// rateGroup is one group of a rateTable.
type rateGroup struct {
	name string
	// state names the callers' state: the group and its limit, so a
	// changed limit starts every caller afresh rather than holding them
	// to the waits of the old one.
	state   string
	limit   ratelimit.Limit
	limited prometheus.Counter
}

// rateTable maps methods to their rate limit groups. It is read-only.
type rateTable struct {
	byMethod  map[string]*rateGroup // by path "/pkg.Service/Method"
	byService map[string]*rateGroup // by "pkg.Service"
	fallback  *rateGroup            // the default group, or nil
}

// newRateTable compiles validated groups; nil when there are none.
func newRateTable(groups map[string]RateGroup, limited *prometheus.CounterVec) *rateTable {
	if len(groups) == 0 {
		return nil
	}
	t := &rateTable{byMethod: map[string]*rateGroup{}, byService: map[string]*rateGroup{}}
	for name, g := range groups {
		burst := g.Burst
		if burst == 0 {
			burst = g.Rate
		}
		rg := &rateGroup{
			name: name, state: fmt.Sprintf("%s:%d/%s/%d", name, g.Rate, g.Per, burst),
			limit: ratelimit.Limit{Rate: g.Rate, Per: g.Per, Burst: burst}, limited: limited.WithLabelValues(name),
		}
		if name == defaultGroup {
			t.fallback = rg
			continue
		}
		for _, m := range g.Methods {
			full := methodName(m)
			if path, ok := pathOf(full); ok {
				t.byMethod[path] = rg
			} else {
				t.byService[full] = rg
			}
		}
	}
	return t
}

// pathOf turns a full method name into its procedure path: a name whose
// last two segments are capitalised ("shop.user.v1.UserService.Login")
// names a method; false for one that names a service
// ("shop.user.v1.UserService", whose package segments are lower case, as
// protobuf style and buf lint want them).
func pathOf(full string) (string, bool) {
	dot := strings.LastIndexByte(full, '.')
	prev := strings.LastIndexByte(full[:dot], '.')
	service, method := full[:dot], full[dot+1:]
	if method == "" || !isUpper(method[0]) || !isUpper(full[prev+1]) {
		return "", false
	}
	return "/" + service + "/" + method, true
}

func isUpper(b byte) bool { return b >= 'A' && b <= 'Z' }

// lookup returns the group of the procedure path of service, or nil.
func (t *rateTable) lookup(path, service string) *rateGroup {
	if g, ok := t.byMethod[path]; ok {
		return g
	}
	if g, ok := t.byService[service]; ok {
		return g
	}
	return t.fallback
}

// rateLimited is the answer to a call over its group's limit.
func rateLimited(group string, retryAfter time.Duration) *connect.Error {
	retryAfter = max(retryAfter, time.Millisecond)
	shown := retryAfter.Round(time.Millisecond)
	if retryAfter >= time.Second {
		shown = (retryAfter + time.Second - 1).Truncate(time.Second)
	}
	return withRetryHint(connect.CodeResourceExhausted,
		fmt.Sprintf("rate limit of %s exceeded; retry after %s", group, shown), retryAfter)
}

// fault is one compiled fault.
type fault struct {
	delay        time.Duration
	delayPercent float64
	abortPercent float64
	abortCode    connect.Code
}

// faultTable maps methods and services to their faults. It is read-only.
type faultTable struct {
	byMethod  map[string]*fault // by path
	byService map[string]*fault
}

// newFaultTable compiles validated faults; nil when there are none.
func newFaultTable(faults map[string]Fault) *faultTable {
	if len(faults) == 0 {
		return nil
	}
	t := &faultTable{byMethod: map[string]*fault{}, byService: map[string]*fault{}}
	for name, f := range faults {
		code, _ := abortCode(f.AbortCode)
		ft := &fault{delay: f.Delay, delayPercent: f.DelayPercent, abortPercent: f.AbortPercent, abortCode: code}
		if path, ok := pathOf(name); ok {
			t.byMethod[path] = ft
		} else {
			t.byService[name] = ft
		}
	}
	return t
}

// lookup returns the fault of a procedure path of service, the method's
// own before its service's, or nil.
func (t *faultTable) lookup(path, service string) *fault {
	if f, ok := t.byMethod[path]; ok {
		return f
	}
	return t.byService[service]
}

// roll reports true percent% of the time.
func roll(percent float64) bool {
	return percent >= 100 || (percent > 0 && rand.Float64()*100 < percent)
}

// CanaryHeader lets a caller choose its side of a canary: "always" sends
// the call to the canary, "never" to the stable instances. Like every
// Keel-* header, it is not passed on.
const CanaryHeader = "Keel-Canary"

// canary is one compiled canary.
type canary struct {
	version string
	weight  float64
	sticky  bool
	calls   [2]prometheus.Counter // stable, canary
}

// newCanaries compiles validated canaries; nil when there are none.
func newCanaries(cs map[string]Canary, calls *prometheus.CounterVec) map[string]*canary {
	if len(cs) == 0 {
		return nil
	}
	out := make(map[string]*canary, len(cs))
	for service, c := range cs {
		out[service] = &canary{version: c.Version, weight: c.Weight, sticky: c.Sticky,
			calls: [2]prometheus.Counter{calls.WithLabelValues(service, "stable"), calls.WithLabelValues(service, "canary")}}
	}
	return out
}

// side decides whether a call to service goes to the canary; caller is
// the call's callerKey when c is sticky.
func (c *canary) side(h http.Header, service, caller string) bool {
	if v := h[CanaryHeader]; len(v) == 1 {
		switch strings.ToLower(strings.TrimSpace(v[0])) {
		case "always":
			return true
		case "never":
			return false
		}
	}
	switch {
	case c.weight <= 0:
		return false
	case c.weight >= 100:
		return true
	case c.sticky:
		return stickyPoint(service, caller) < c.weight
	}
	return rand.Float64()*100 < c.weight
}

// stickyPoint places a caller of service on [0, 100), the same way on
// every edge instance.
func stickyPoint(service, caller string) float64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(service))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(caller))
	// Mix the FNV hash's high bits down: its low bits alone are weak.
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return float64(x>>11) / float64(1<<53) * 100
}

// preference is the call policy's preference for a side of c.
func (c *canary) preference(toCanary bool) callpolicy.Preference {
	return callpolicy.Preference{Key: "version", Value: c.version, Exclude: !toCanary}
}

// callerKey names the caller of a call for rate limits and sticky
// canaries: the user when logged in, else the client's address.
func callerKey(user string, h http.Header, remoteAddr string, trusted *trustedProxies) string {
	if user != "" {
		return "user:" + user
	}
	return "addr:" + clientAddr(h["X-Forwarded-For"], remoteAddr, trusted)
}

// clientAddr is the address of the client a call comes from: the peer,
// or, when the peer is a trusted proxy, the last address in its
// X-Forwarded-For chain that is not a trusted proxy (those before it
// are the client's to write, and not believed).
func clientAddr(forwarded []string, remoteAddr string, trusted *trustedProxies) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	if len(forwarded) == 0 || !trusted.trusts(host) {
		return host
	}
	chain := strings.Split(strings.Join(forwarded, ","), ",")
	for i := len(chain) - 1; i >= 0; i-- {
		hop := strings.TrimSpace(chain[i])
		if addr, err := netip.ParseAddr(hop); err == nil {
			hop = addr.Unmap().String()
		} else {
			return host // not an address: the chain is not to be believed past here
		}
		if !trusted.trusts(hop) || i == 0 {
			return hop
		}
	}
	return host
}
