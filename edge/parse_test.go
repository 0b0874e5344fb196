package edge

import (
	"net/http"
	"net/netip"
	"reflect"
	"testing"

	"connectrpc.com/connect"
)

func TestServiceOf(t *testing.T) {
	for _, tc := range []struct {
		path string
		want string
		ok   bool
	}{
		{"/shop.user.v1.UserService/GetUser", "shop.user.v1.UserService", true},
		{"/grpc.health.v1.Health/Check", "grpc.health.v1.Health", true},
		{"/a/b", "a", true},
		{"", "", false},
		{"/", "", false},
		{"//x", "", false},
		{"//xy", "", false},
		{"/a/", "", false},
		{"/ab/", "", false},
		{"/abc", "", false},
		{"/a/b/c", "", false},
		{"/pkg.Service/Method/", "", false},
		{"pkg.Service/Method", "", false},
		{"x/pkg.Service/Method", "", false},
	} {
		got, ok := serviceOf(tc.path)
		if got != tc.want || ok != tc.ok {
			t.Errorf("serviceOf(%q) = %q, %v; want %q, %v", tc.path, got, ok, tc.want, tc.ok)
		}
	}
}

// mustTrust builds the trusted proxies of list, failing t on a parse error.
func mustTrust(t *testing.T, list ...string) *trustedProxies {
	t.Helper()
	trusted, err := newTrustedProxies(list)
	if err != nil {
		t.Fatalf("newTrustedProxies(%q): %v", list, err)
	}
	return trusted
}

func TestForwardHeaders(t *testing.T) {
	const caller = "203.0.113.9:50000"
	for _, tc := range []struct {
		name    string
		in      http.Header
		remote  string
		trusted []string
		want    http.Header
	}{
		{
			name: "end-to-end headers kept",
			in: http.Header{
				"Content-Type":  {"application/grpc"},
				"Authorization": {"Bearer t"},
				"Grpc-Timeout":  {"5S"},
				"X-Custom":      {"a", "b"},
			},
			remote: caller,
			want: http.Header{
				"Content-Type":    {"application/grpc"},
				"Authorization":   {"Bearer t"},
				"Grpc-Timeout":    {"5S"},
				"X-Custom":        {"a", "b"},
				"X-Forwarded-For": {"203.0.113.9"},
			},
		},
		{
			name: "hop-by-hop headers removed",
			in: http.Header{
				"Connection":          {"keep-alive"},
				"Proxy-Connection":    {"keep-alive"},
				"Keep-Alive":          {"timeout=5"},
				"Proxy-Authenticate":  {"Basic"},
				"Proxy-Authorization": {"Basic eA=="},
				"Trailer":             {"Grpc-Status"},
				"Transfer-Encoding":   {"chunked"},
				"Upgrade":             {"websocket"},
				"Content-Type":        {"application/json"},
			},
			remote: caller,
			want:   http.Header{"Content-Type": {"application/json"}, "X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name: "headers named by Connection removed",
			in: http.Header{
				"Connection":   {"X-Hop, x-other-hop ,,", "X-THIRD"},
				"X-Hop":        {"1"},
				"X-Other-Hop":  {"2"},
				"X-Third":      {"3"},
				"X-End":        {"4"},
				"Content-Type": {"application/proto"},
			},
			remote: caller,
			want: http.Header{
				"X-End":           {"4"},
				"Content-Type":    {"application/proto"},
				"X-Forwarded-For": {"203.0.113.9"},
			},
		},
		{
			name:   "TE trailers kept",
			in:     http.Header{"Te": {"trailers"}},
			remote: caller,
			want:   http.Header{"Te": {"trailers"}, "X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name:   "TE trailers normalised",
			in:     http.Header{"Te": {"Trailers, deflate;q=0.5"}},
			remote: caller,
			want:   http.Header{"Te": {"trailers"}, "X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name:   "other TE dropped",
			in:     http.Header{"Te": {"gzip, deflate"}},
			remote: caller,
			want:   http.Header{"X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name: "identity headers removed",
			in: http.Header{
				"Keel-User":     {"admin"},
				"Keel-Tenant":   {"t1"},
				"Keel-Priority": {"high"},
				"Keelson":       {"not ours"},
			},
			remote: caller,
			want:   http.Header{"Keelson": {"not ours"}, "X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name:   "low priority kept",
			in:     http.Header{"Keel-Priority": {"low"}, "Keel-User": {"admin"}},
			remote: caller,
			want:   http.Header{"Keel-Priority": {"low"}, "X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name:   "low priority normalised",
			in:     http.Header{"Keel-Priority": {"LOW"}},
			remote: caller,
			want:   http.Header{"Keel-Priority": {"low"}, "X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name:   "low priority with another value removed",
			in:     http.Header{"Keel-Priority": {"low", "high"}},
			remote: caller,
			want:   http.Header{"X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name:   "forwarded-for of an untrusted caller replaced",
			in:     http.Header{"X-Forwarded-For": {"198.51.100.1", "198.51.100.2"}},
			remote: caller,
			want:   http.Header{"X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name:    "forwarded-for of a caller outside the trusted prefixes replaced",
			in:      http.Header{"X-Forwarded-For": {"198.51.100.1"}},
			remote:  caller,
			trusted: []string{"10.0.0.0/8", "192.0.2.7"},
			want:    http.Header{"X-Forwarded-For": {"203.0.113.9"}},
		},
		{
			name:    "forwarded-for of a trusted prefix appended",
			in:      http.Header{"X-Forwarded-For": {"198.51.100.1", "198.51.100.2, 198.51.100.3"}},
			remote:  "10.1.2.3:4000",
			trusted: []string{"10.0.0.0/8"},
			want:    http.Header{"X-Forwarded-For": {"198.51.100.1, 198.51.100.2, 198.51.100.3, 10.1.2.3"}},
		},
		{
			name:    "forwarded-for of a trusted address appended",
			in:      http.Header{"X-Forwarded-For": {"198.51.100.1"}},
			remote:  "192.0.2.7:4000",
			trusted: []string{"10.0.0.0/8", "192.0.2.7"},
			want:    http.Header{"X-Forwarded-For": {"198.51.100.1, 192.0.2.7"}},
		},
		{
			name:    "neighbour of a trusted address replaced",
			in:      http.Header{"X-Forwarded-For": {"198.51.100.1"}},
			remote:  "192.0.2.8:4000",
			trusted: []string{"192.0.2.7"},
			want:    http.Header{"X-Forwarded-For": {"192.0.2.8"}},
		},
		{
			name:    "trusted caller without forwarded-for",
			in:      http.Header{},
			remote:  "10.1.2.3:4000",
			trusted: []string{"10.0.0.0/8"},
			want:    http.Header{"X-Forwarded-For": {"10.1.2.3"}},
		},
		{
			name:   "untrusted IPv6 caller",
			in:     http.Header{"X-Forwarded-For": {"198.51.100.1"}},
			remote: "[2001:db8::1]:443",
			want:   http.Header{"X-Forwarded-For": {"2001:db8::1"}},
		},
		{
			name:    "trusted IPv6 caller",
			in:      http.Header{"X-Forwarded-For": {"198.51.100.1"}},
			remote:  "[2001:db8::1]:443",
			trusted: []string{"2001:db8::/32"},
			want:    http.Header{"X-Forwarded-For": {"198.51.100.1, 2001:db8::1"}},
		},
		{
			name:    "IPv6 caller outside an IPv6 prefix",
			in:      http.Header{"X-Forwarded-For": {"198.51.100.1"}},
			remote:  "[2001:db9::1]:443",
			trusted: []string{"2001:db8::/32"},
			want:    http.Header{"X-Forwarded-For": {"2001:db9::1"}},
		},
		{
			name:    "IPv4-mapped caller in an IPv4 prefix",
			in:      http.Header{"X-Forwarded-For": {"198.51.100.1"}},
			remote:  "[::ffff:10.1.2.3]:4000",
			trusted: []string{"10.0.0.0/8"},
			want:    http.Header{"X-Forwarded-For": {"198.51.100.1, ::ffff:10.1.2.3"}},
		},
		{
			name:    "IPv4-mapped caller outside the prefixes",
			in:      http.Header{"X-Forwarded-For": {"198.51.100.1"}},
			remote:  "[::ffff:203.0.113.9]:4000",
			trusted: []string{"10.0.0.0/8"},
			want:    http.Header{"X-Forwarded-For": {"::ffff:203.0.113.9"}},
		},
		{
			name:    "caller address without port",
			in:      http.Header{"X-Forwarded-For": {"198.51.100.1"}},
			remote:  "@",
			trusted: []string{"10.0.0.0/8"},
			want:    http.Header{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.in.Clone()
			forwardHeaders(h, tc.remote, mustTrust(t, tc.trusted...))
			if !reflect.DeepEqual(h, tc.want) {
				t.Fatalf("forwardHeaders(%v) =\n%v\nwant\n%v", tc.in, h, tc.want)
			}
		})
	}
}

func TestNewTrustedProxies(t *testing.T) {
	for _, tc := range []struct {
		name    string
		list    []string
		want    []netip.Prefix // nil: trusts none
		wantErr bool
	}{
		{name: "none", list: nil},
		{name: "empty", list: []string{}},
		{name: "cidrs", list: []string{"10.0.0.0/8", "2001:db8::/32"},
			want: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}},
		{name: "cidr with host bits masked", list: []string{"10.1.2.3/8"}, want: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
		{name: "bare addresses", list: []string{"192.0.2.7", "2001:db8::1"},
			want: []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::1/128")}},
		{name: "garbage", list: []string{"10.0.0.0/8", "proxy.internal"}, wantErr: true},
		{name: "prefix too long", list: []string{"10.0.0.0/33"}, wantErr: true},
		{name: "empty entry", list: []string{""}, wantErr: true},
		{name: "address with port", list: []string{"10.0.0.1:80"}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := newTrustedProxies(tc.list)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("newTrustedProxies(%q) = %v, want an error", tc.list, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("newTrustedProxies(%q): %v", tc.list, err)
			}
			if tc.want == nil {
				if got != nil {
					t.Fatalf("newTrustedProxies(%q) = %v, want nil (trusts none)", tc.list, got.prefixes)
				}
				return
			}
			if got == nil || !reflect.DeepEqual(got.prefixes, tc.want) {
				t.Fatalf("newTrustedProxies(%q) = %v, want prefixes %v", tc.list, got, tc.want)
			}
		})
	}
}

func TestCallContentType(t *testing.T) {
	for ct, want := range map[string]bool{
		"application/json":                  true,
		"application/json; charset=utf-8":   true,
		"Application/JSON":                  true,
		"application/proto":                 true,
		"application/grpc":                  true,
		"application/grpc+proto":            true,
		"application/grpc+json":             true,
		"application/grpc-web":              true,
		"application/grpc-web+proto":        true,
		"application/connect+json":          true,
		"application/connect+proto":         true,
		"":                                  false,
		"text/plain":                        false,
		"application/x-www-form-urlencoded": false,
		"application/grpc-web-text":         false,
		"application/grpc+":                 false,
		"application/connect+":              false,
		"application/xml":                   false,
		"multipart/form-data; boundary=x":   false,
	} {
		if got := callContentType(ct); got != want {
			t.Errorf("callContentType(%q) = %v, want %v", ct, got, want)
		}
	}
}

func TestCheckEnvelope(t *testing.T) {
	for _, tc := range []struct {
		name   string
		prefix []byte
		code   connect.Code // 0: fine
	}{
		{"plain", []byte{0, 0, 0, 0, 3}, 0},
		{"compressed", []byte{1, 0, 0, 0, 3}, 0},
		{"empty message", []byte{0, 0, 0, 0, 0}, 0},
		{"at the limit", []byte{0, 0, 0, 0x04, 0}, 0},
		{"over the limit", []byte{0, 0, 0, 0x04, 1}, connect.CodeResourceExhausted},
		{"end of stream, a server's flag", []byte{2, 0, 0, 0, 0}, connect.CodeInvalidArgument},
		{"trailers, a server's flag", []byte{0x80, 0, 0, 0, 0}, connect.CodeInvalidArgument},
		{"unframed protobuf", []byte{0x0a, 0x08, 'K', 'E', 'E'}, connect.CodeInvalidArgument},
		{"unframed JSON", []byte(`{"sku`), connect.CodeInvalidArgument},
	} {
		err := checkEnvelope(tc.prefix, 1024)
		if got := connect.CodeOf(err); err != nil && got != tc.code || err == nil && tc.code != 0 {
			t.Errorf("%s: %v, want code %v", tc.name, err, tc.code)
		}
	}
}
