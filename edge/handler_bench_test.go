package edge

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/callpolicy"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
)

// discardWriter is a ResponseWriter that keeps nothing, so a benchmark
// of the proxy's handler counts the proxy's own work only.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

// BenchmarkProxyHandler measures the proxy's handler alone on a unary
// Connect JSON call to an upstream that costs nothing: what the edge adds
// besides the HTTP server in front of it. Compare allocs/op and ns/op
// across changes.
func BenchmarkProxyHandler(b *testing.B) {
	const answer = `{"user":{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}}`
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	up := server.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header()["Content-Type"] = []string{"application/json"}
		_, _ = io.WriteString(w, answer)
	}), server.Config{})
	go func() { _ = up.Serve(ln) }()
	defer up.Close()

	registry := discovery.NewStatic()
	_ = registry.Register(context.Background(), discovery.Instance{ID: "u", Service: "user", Addr: ln.Addr().String()})
	e, err := New(Config{Server: server.Config{Addr: "127.0.0.1:0"}, Services: []string{userv1connect.UserServiceName}}, registry, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	p := e.proxy
	_ = callpolicy.Report{}
	_ = config.Calls{}
	body := `{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`
	w := &discardWriter{h: http.Header{}}
	b.ReportAllocs()
	for b.Loop() {
		r, _ := http.NewRequest(http.MethodPost, "http://edge"+userv1connect.UserServiceGetUserProcedure, strings.NewReader(body))
		r.Header["Content-Type"] = []string{"application/json"}
		r.RemoteAddr = "127.0.0.1:5555"
		r.RequestURI = r.URL.RequestURI()
		clear(w.h)
		p.ServeHTTP(w, r)
	}
}
