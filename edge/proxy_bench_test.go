package edge_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
)

// BenchmarkProxyUnary measures one Connect JSON unary call over HTTP/1.1
// keep-alive, sent straight to a loopback upstream ("direct", the baseline)
// and through the edge ("edge"), serially and from parallel callers. Client,
// edge and upstream all run in this process: compare the sub-benchmarks of
// one run, not absolute numbers.
func BenchmarkProxyUnary(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logger := slog.New(slog.DiscardHandler)

	mux := http.NewServeMux()
	mux.Handle("/"+echoService+"/Echo", connect.NewUnaryHandler("/"+echoService+"/Echo",
		func(_ context.Context, req *connect.Request[wrapperspb.StringValue]) (*connect.Response[wrapperspb.StringValue], error) {
			return connect.NewResponse(req.Msg), nil
		}, connect.WithCompressMinBytes(1024)))
	upstream := server.New(server.Config{}, logger)
	upstream.HandleHTTP("/", mux)
	if err := upstream.Listen(); err != nil {
		b.Fatal(err)
	}
	upDone := make(chan struct{})
	go func() { _ = upstream.Serve(ctx); close(upDone) }()

	registry := discovery.NewStatic()
	if err := registry.Register(ctx, discovery.Instance{ID: "echo-1", Service: "echo", Addr: upstream.Addr()}); err != nil {
		b.Fatal(err)
	}
	e, err := edge.New(edge.Config{
		Server: server.Config{Addr: "127.0.0.1:0"},
		// The user service's contract declares REST routes, so the edge
		// has its REST gateway in front, as in production.
		Services: []string{echoService, userv1connect.UserServiceName},
		Routes:   map[string]string{echoService: "echo"},
	}, registry, logger)
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Listen(); err != nil {
		b.Fatal(err)
	}
	edgeDone := make(chan struct{})
	go func() { _ = e.Serve(ctx); close(edgeDone) }()
	defer func() { cancel(); <-edgeDone; <-upDone }()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	for _, target := range []struct{ name, addr string }{{"direct", upstream.Addr()}, {"edge", e.Addr()}} {
		url := "http://" + target.addr + "/" + echoService + "/Echo"
		b.Run(target.name+"/serial", func(b *testing.B) { benchUnary(b, client, url, false) })
		b.Run(target.name+"/parallel", func(b *testing.B) { benchUnary(b, client, url, true) })
	}
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: &http.Transport{Protocols: p}}
	b.Run("direct-h2c/serial", func(b *testing.B) { benchUnary(b, h2, "http://"+upstream.Addr()+"/"+echoService+"/Echo", false) })
}

func benchUnary(b *testing.B, client *http.Client, url string, parallel bool) {
	call := func() error {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`"hello"`))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		res, err := client.Do(req)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		var buf [64]byte
		for {
			if _, err := res.Body.Read(buf[:]); err != nil {
				break
			}
		}
		if res.StatusCode != http.StatusOK {
			b.Fatalf("status %d", res.StatusCode)
		}
		return nil
	}
	if err := call(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	if parallel {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := call(); err != nil {
					b.Error(err)
					return
				}
			}
		})
		return
	}
	for b.Loop() {
		if err := call(); err != nil {
			b.Fatal(err)
		}
	}
}
