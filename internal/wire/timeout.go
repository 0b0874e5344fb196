package wire

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Timeout headers, as http.Header keys.
const (
	// ConnectTimeout is Connect's connect-timeout-ms: up to 10 digits of
	// milliseconds.
	ConnectTimeout = "Connect-Timeout-Ms"
	// GRPCTimeout is gRPC's (and gRPC-Web's) grpc-timeout: up to 8 digits
	// and a unit, one of H M S m u n.
	GRPCTimeout = "Grpc-Timeout"
)

// ParseTimeout reads the caller's deadline from Connect's
// connect-timeout-ms or gRPC's grpc-timeout header, as connect-go's
// handlers read it: ok is false when there is none (or a gRPC timeout too
// long to hold, which gRPC takes as none), and a malformed one is an
// error naming the header, which the caller gets as invalid_argument. A
// zero timeout is valid: the call has no time left.
func ParseTimeout(h http.Header) (d time.Duration, ok bool, err error) {
	if v := h[ConnectTimeout]; len(v) > 0 && v[0] != "" {
		if len(v[0]) > 10 {
			return 0, false, fmt.Errorf("Connect-Timeout-Ms %q: more than 10 digits", v[0])
		}
		ms, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil || ms < 0 {
			return 0, false, fmt.Errorf("Connect-Timeout-Ms %q: want a whole number of milliseconds", v[0])
		}
		return time.Duration(ms) * time.Millisecond, true, nil
	}
	v := h[GRPCTimeout]
	if len(v) == 0 || v[0] == "" {
		return 0, false, nil
	}
	t := v[0]
	malformed := func() error {
		return fmt.Errorf("Grpc-Timeout %q: want at most 8 digits and a unit, one of H M S m u n", t)
	}
	var unit time.Duration
	switch t[len(t)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false, malformed()
	}
	value, err := strconv.ParseInt(t[:len(t)-1], 10, 64)
	if err != nil || value < 0 || len(t) > 9 {
		return 0, false, malformed()
	}
	if value > int64(time.Duration(1<<62)/unit) {
		return 0, false, nil // longer than anyone waits: as good as none
	}
	return time.Duration(value) * unit, true, nil
}

// WriteTimeout writes left, the time a call has, into the header the
// request's protocol reads it from: grpc-timeout for gRPC and gRPC-Web
// (whose content types start with application/grpc), connect-timeout-ms
// for Connect. It rounds up to the millisecond, so a call with any time
// left is never sent with none; left must be positive.
func WriteTimeout(h http.Header, left time.Duration) {
	ms := int64((left + time.Millisecond - 1) / time.Millisecond)
	if ct := h["Content-Type"]; len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc") {
		var buf [24]byte
		// At most 8 digits (gRPC's limit), in milliseconds or seconds.
		if ms < 1e8 {
			h[GRPCTimeout] = []string{string(append(strconv.AppendInt(buf[:0], ms, 10), 'm'))}
		} else {
			h[GRPCTimeout] = []string{string(append(strconv.AppendInt(buf[:0], min(ms/1000, 1e8-1), 10), 'S'))}
		}
		return
	}
	h[ConnectTimeout] = []string{strconv.FormatInt(min(ms, 9999999999), 10)}
}

// ConnectUnary reports whether r is a unary Connect call: a GET, or a
// POST of application/proto or application/json.
func ConnectUnary(r *http.Request) bool {
	if r.Method == http.MethodGet {
		return true
	}
	ct := r.Header["Content-Type"]
	return len(ct) == 1 && (strings.HasPrefix(ct[0], "application/proto") || strings.HasPrefix(ct[0], "application/json"))
}
