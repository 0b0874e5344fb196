package wire_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keelplatform/keel/internal/wire"
)

func TestParseTimeout(t *testing.T) {
	for _, tc := range []struct {
		name   string
		header http.Header
		want   time.Duration
		ok     bool
		bad    bool // malformed: invalid_argument
	}{
		{name: "none", header: http.Header{}},

		{name: "connect ms", header: http.Header{"Connect-Timeout-Ms": {"1500"}}, want: 1500 * time.Millisecond, ok: true},
		{name: "connect one ms", header: http.Header{"Connect-Timeout-Ms": {"1"}}, want: time.Millisecond, ok: true},
		{name: "connect ten digits", header: http.Header{"Connect-Timeout-Ms": {"9999999999"}}, want: 9999999999 * time.Millisecond, ok: true},
		{name: "connect zero", header: http.Header{"Connect-Timeout-Ms": {"0"}}, want: 0, ok: true},
		{name: "connect empty", header: http.Header{"Connect-Timeout-Ms": {""}}},
		{name: "connect eleven digits", header: http.Header{"Connect-Timeout-Ms": {"10000000000"}}, bad: true},
		{name: "connect negative", header: http.Header{"Connect-Timeout-Ms": {"-5"}}, bad: true},
		{name: "connect garbage", header: http.Header{"Connect-Timeout-Ms": {"5s"}}, bad: true},
		{name: "connect letters", header: http.Header{"Connect-Timeout-Ms": {"abc"}}, bad: true},
		{name: "connect overflows int64", header: http.Header{"Connect-Timeout-Ms": {"99999999999999999999"}}, bad: true},

		{name: "grpc hours", header: http.Header{"Grpc-Timeout": {"2H"}}, want: 2 * time.Hour, ok: true},
		{name: "grpc minutes", header: http.Header{"Grpc-Timeout": {"3M"}}, want: 3 * time.Minute, ok: true},
		{name: "grpc seconds", header: http.Header{"Grpc-Timeout": {"4S"}}, want: 4 * time.Second, ok: true},
		{name: "grpc milliseconds", header: http.Header{"Grpc-Timeout": {"250m"}}, want: 250 * time.Millisecond, ok: true},
		{name: "grpc microseconds", header: http.Header{"Grpc-Timeout": {"750u"}}, want: 750 * time.Microsecond, ok: true},
		{name: "grpc nanoseconds", header: http.Header{"Grpc-Timeout": {"900n"}}, want: 900 * time.Nanosecond, ok: true},
		{name: "grpc eight digits", header: http.Header{"Grpc-Timeout": {"99999999m"}}, want: 99999999 * time.Millisecond, ok: true},
		{name: "grpc zero", header: http.Header{"Grpc-Timeout": {"0S"}}, want: 0, ok: true},
		{name: "grpc empty", header: http.Header{"Grpc-Timeout": {""}}},
		{name: "grpc nine digits", header: http.Header{"Grpc-Timeout": {"100000000m"}}, bad: true},
		{name: "grpc lowercase seconds", header: http.Header{"Grpc-Timeout": {"5s"}}, bad: true},
		{name: "grpc lowercase hours", header: http.Header{"Grpc-Timeout": {"5h"}}, bad: true},
		{name: "grpc unknown unit", header: http.Header{"Grpc-Timeout": {"5x"}}, bad: true},
		{name: "grpc no unit", header: http.Header{"Grpc-Timeout": {"15"}}, bad: true},
		{name: "grpc unit only", header: http.Header{"Grpc-Timeout": {"S"}}, bad: true},
		{name: "grpc negative", header: http.Header{"Grpc-Timeout": {"-1S"}}, bad: true},
		{name: "grpc garbage digits", header: http.Header{"Grpc-Timeout": {"1.5S"}}, bad: true},
		// time.Duration holds about 2.9 million hours; the limit is
		// 1<<62ns, and longer is as good as none (gRPC's own reading).
		{name: "grpc largest hours", header: http.Header{"Grpc-Timeout": {"1281023H"}}, want: 1281023 * time.Hour, ok: true},
		{name: "grpc hours overflow", header: http.Header{"Grpc-Timeout": {"1281024H"}}},
		{name: "grpc eight digit hours overflow", header: http.Header{"Grpc-Timeout": {"99999999H"}}},
		{name: "grpc minutes overflow", header: http.Header{"Grpc-Timeout": {"99999999M"}}},
		{name: "grpc eight digit seconds fit", header: http.Header{"Grpc-Timeout": {"99999999S"}}, want: 99999999 * time.Second, ok: true},

		{name: "connect header wins", header: http.Header{"Connect-Timeout-Ms": {"10"}, "Grpc-Timeout": {"1H"}}, want: 10 * time.Millisecond, ok: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok, err := wire.ParseTimeout(tc.header)
			if tc.bad {
				if err == nil {
					t.Fatalf("wire.ParseTimeout(%v) = %v, %v; want an error", tc.header, got, ok)
				}
				for name := range tc.header {
					if !strings.Contains(err.Error(), name) {
						t.Errorf("error %q does not name the header %s", err, name)
					}
				}
				return
			}
			if err != nil || got != tc.want || ok != tc.ok {
				t.Fatalf("wire.ParseTimeout(%v) = %v, %v, %v; want %v, %v", tc.header, got, ok, err, tc.want, tc.ok)
			}
		})
	}
}

// TestWriteTimeoutReadsBack: what WriteTimeout writes, ParseTimeout reads
// as the same time (rounded up to the millisecond), in each protocol's
// header, within each header's digit limit.
func TestWriteTimeoutReadsBack(t *testing.T) {
	for _, tc := range []struct {
		contentType string
		left        time.Duration
		header      string
		want        string
		read        time.Duration
	}{
		{"application/json", 1500 * time.Millisecond, wire.ConnectTimeout, "1500", 1500 * time.Millisecond},
		{"application/proto", 300 * time.Microsecond, wire.ConnectTimeout, "1", time.Millisecond},
		{"application/connect+proto", 2 * time.Second, wire.ConnectTimeout, "2000", 2 * time.Second},
		{"application/json", 1 << 62, wire.ConnectTimeout, "9999999999", 9999999999 * time.Millisecond},
		{"application/grpc", 250 * time.Millisecond, wire.GRPCTimeout, "250m", 250 * time.Millisecond},
		{"application/grpc-web+proto", 1100 * time.Microsecond, wire.GRPCTimeout, "2m", 2 * time.Millisecond},
		{"application/grpc", 99999999 * time.Millisecond, wire.GRPCTimeout, "99999999m", 99999999 * time.Millisecond},
		{"application/grpc", 100000000 * time.Millisecond, wire.GRPCTimeout, "100000S", 100000 * time.Second},
		{"application/grpc", 1 << 62, wire.GRPCTimeout, "99999999S", 99999999 * time.Second},
	} {
		h := http.Header{"Content-Type": {tc.contentType}}
		wire.WriteTimeout(h, tc.left)
		if got := h.Get(tc.header); got != tc.want {
			t.Errorf("%s, %v: %s %q, want %q (%v)", tc.contentType, tc.left, tc.header, got, tc.want, h)
		}
		if d, ok, err := wire.ParseTimeout(h); err != nil || !ok || d != tc.read {
			t.Errorf("%s, %v: read back %v, %v, %v; want %v", tc.contentType, tc.left, d, ok, err, tc.read)
		}
	}
}

func TestConnectUnary(t *testing.T) {
	for _, tc := range []struct {
		method, contentType string
		want                bool
	}{
		{http.MethodGet, "", true},
		{http.MethodPost, "application/json", true},
		{http.MethodPost, "application/json; charset=utf-8", true},
		{http.MethodPost, "application/proto", true},
		{http.MethodPost, "application/connect+proto", false},
		{http.MethodPost, "application/grpc", false},
		{http.MethodPost, "application/grpc-web+proto", false},
		{http.MethodPost, "", false},
	} {
		r, _ := http.NewRequest(tc.method, "http://x/pkg.S/M", nil)
		if tc.contentType != "" {
			r.Header.Set("Content-Type", tc.contentType)
		}
		if got := wire.ConnectUnary(r); got != tc.want {
			t.Errorf("%s %q: ConnectUnary = %v, want %v", tc.method, tc.contentType, got, tc.want)
		}
	}
}
