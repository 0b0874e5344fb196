package edge

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
	"github.com/keelplatform/keel/internal/telemetry"
)

// discardWriter is a ResponseWriter that keeps nothing, so a benchmark
// of the proxy's handler counts the proxy's own work only.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

// BenchmarkProxyHandler measures the proxy's handler alone on a unary
// Connect JSON call to an upstream that costs nothing: what the edge adds
// besides the HTTP server in front of it. "untraced" has tracing off;
// "traced" has it on with no call sampled, which is what 99 calls in 100
// cost at a 1% sampling ratio. Compare allocs/op and ns/op across changes.
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

	traced, err := telemetry.New("edge", func(k string) (string, bool) {
		v, ok := map[string]string{
			// Nothing listens there; nothing is sampled, so nothing is sent.
			"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
			"OTEL_TRACES_SAMPLER":         "traceidratio",
			"OTEL_TRACES_SAMPLER_ARG":     "0",
		}[k]
		return v, ok
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = traced.Shutdown(context.Background()) }()
	registry := discovery.NewStatic()
	_ = registry.Register(context.Background(), discovery.Instance{ID: "u", Service: "user", Addr: ln.Addr().String()})
	body := `{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}`
	for _, bc := range []struct {
		name string
		tel  *telemetry.Telemetry
	}{{"untraced", telemetry.Off}, {"traced", traced}} {
		b.Run(bc.name, func(b *testing.B) {
			e, err := New(Config{Server: server.Config{Addr: "127.0.0.1:0"}, Services: []string{userv1connect.UserServiceName}, Telemetry: bc.tel}, registry, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			p := e.proxy
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
		})
	}
}

// BenchmarkFrontHandler measures the edge's root handler, which sends
// procedure calls to the proxy and the rest to the REST gateway, on a
// unary Connect JSON call ("connect", to set beside BenchmarkProxyHandler:
// the difference is what REST costs calls that are not REST) and on the
// same call made as REST, GET /v1/users/{id} ("rest"), to an upstream
// that costs nothing.
func BenchmarkFrontHandler(b *testing.B) {
	const id = "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"
	answerJSON := `{"user":{"id":"` + id + `"}}`
	answerProto, err := proto.Marshal(&userv1.GetUserResponse{User: &userv1.User{Id: id}})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	up := server.NewHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Header.Get("Content-Type") == "application/proto" || strings.Contains(r.URL.RawQuery, "encoding=proto") {
			w.Header()["Content-Type"] = []string{"application/proto"}
			_, _ = w.Write(answerProto)
			return
		}
		w.Header()["Content-Type"] = []string{"application/json"}
		_, _ = io.WriteString(w, answerJSON)
	}), server.Config{})
	go func() { _ = up.Serve(ln) }()
	defer up.Close()

	registry := discovery.NewStatic()
	_ = registry.Register(context.Background(), discovery.Instance{ID: "u", Service: "user", Addr: ln.Addr().String()})
	e, err := New(Config{Server: server.Config{Addr: "127.0.0.1:0"}, Services: []string{userv1connect.UserServiceName}}, registry, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	rest, err := newRESTGateway(e.routes, e.proxy)
	if err != nil || rest == nil {
		b.Fatalf("REST gateway: %v %v", rest, err)
	}
	h := &front{proxy: e.proxy, rest: rest}
	w := &discardWriter{h: http.Header{}}
	call := func(b *testing.B, method, url, contentType, body string) {
		b.ReportAllocs()
		for b.Loop() {
			var r *http.Request
			if body == "" {
				r, _ = http.NewRequest(method, url, http.NoBody) // as a server request has
			} else {
				r, _ = http.NewRequest(method, url, strings.NewReader(body))
				r.Header["Content-Type"] = []string{contentType}
			}
			r.RemoteAddr = "127.0.0.1:5555"
			r.RequestURI = r.URL.RequestURI()
			clear(w.h)
			h.ServeHTTP(w, r)
		}
	}
	b.Run("connect", func(b *testing.B) {
		call(b, http.MethodPost, "http://edge"+userv1connect.UserServiceGetUserProcedure, "application/json", `{"id":"`+id+`"}`)
	})
	b.Run("rest", func(b *testing.B) {
		call(b, http.MethodGet, "http://edge/v1/users/"+id, "", "")
	})
}

func (w *discardWriter) Flush() {}
