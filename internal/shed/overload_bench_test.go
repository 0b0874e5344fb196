package shed_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/server"
)

// busyUsers answers GetUser after holding one of a few connections to a
// backing store for a while: a service whose capacity is that store (as
// the user service's is its database), and whose excess calls queue.
type busyUsers struct {
	userv1connect.UnimplementedUserServiceHandler
	store chan struct{} // the store's connections
	hold  time.Duration
}

func (b *busyUsers) GetUser(ctx context.Context, req *connect.Request[userv1.GetUserRequest]) (*connect.Response[userv1.GetUserResponse], error) {
	select {
	case b.store <- struct{}{}:
	case <-ctx.Done():
		return nil, connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	}
	time.Sleep(b.hold)
	<-b.store
	sum := sha256.Sum256([]byte(req.Msg.GetId()))
	return connect.NewResponse(&userv1.GetUserResponse{User: &userv1.User{Id: req.Msg.GetId(), DisplayName: fmt.Sprintf("%x", sum[:4])}}), nil
}

// overloadServer serves busyUsers with shedding s until the benchmark ends.
func overloadServer(b *testing.B, s config.Shedding) userv1connect.UserServiceClient {
	ctx, cancel := context.WithCancel(context.Background())
	srv := server.New(server.Config{Shedding: s}, slog.New(slog.DiscardHandler))
	srv.Handle(userv1connect.NewUserServiceHandler(&busyUsers{store: make(chan struct{}, 4), hold: 5 * time.Millisecond}, srv.HandlerOptions()...))
	if err := srv.Listen(); err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	// One multiplexed h2c connection, as a proxy in front would hold:
	// calls reach the server at once, with no connection to set up.
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	transport := &http.Transport{Protocols: protocols}
	return userv1connect.NewUserServiceClient(&http.Client{Transport: transport}, "http://"+srv.Addr())
}

func getUserOnce(ctx context.Context, c userv1connect.UserServiceClient) error {
	_, err := c.GetUser(ctx, connect.NewRequest(&userv1.GetUserRequest{Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10"}))
	return err
}

// capacity measures the most calls per second c's server completes with
// a few callers in a closed loop, and the p99 of calls made one at a time
// (unloaded).
func capacity(c userv1connect.UserServiceClient, d time.Duration) (perSecond float64, unloadedP99 time.Duration) {
	var serial []time.Duration
	for range 200 {
		began := time.Now()
		_ = getUserOnce(context.Background(), c)
		serial = append(serial, time.Since(began))
	}
	slices.Sort(serial)
	var n atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(d)
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(stop) {
				if getUserOnce(context.Background(), c) == nil {
					n.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return float64(n.Load()) / d.Seconds(), serial[len(serial)*99/100]
}

// openLoop offers rate calls per second for d, each with deadline, and
// returns the successful calls per second and their p99, measured from
// each call's scheduled start.
func openLoop(c userv1connect.UserServiceClient, rate float64, d, deadline time.Duration) (goodput float64, p99 time.Duration, refused int) {
	interval := time.Duration(float64(time.Second) / rate)
	total := int(d / interval)
	lat := make([]time.Duration, total)
	ok := make([]bool, total)
	codes := make([]connect.Code, total)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		due := start.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			time.Sleep(w)
		}
		wg.Go(func() {
			ctx, cancel := context.WithDeadline(context.Background(), due.Add(deadline))
			defer cancel()
			err := getUserOnce(ctx, c)
			lat[i], ok[i] = time.Since(due), err == nil
			if err != nil {
				codes[i] = connect.CodeOf(err)
			}
		})
	}
	wg.Wait()
	var good []time.Duration
	for i := range total {
		switch {
		case ok[i]:
			good = append(good, lat[i])
		case codes[i] == connect.CodeResourceExhausted:
			refused++
		}
	}
	if len(good) == 0 {
		return 0, 0, refused
	}
	slices.Sort(good)
	return float64(len(good)) / d.Seconds(), good[len(good)*99/100], refused
}

// BenchmarkOverload offers a service three times the calls it can
// complete (its store takes 4 calls at a time, 5ms each), each with a 1s
// deadline, with adaptive load shedding and without, and reports goodput
// as a share of capacity and the p99 of the calls that succeeded as a
// multiple of the unloaded p99. Without shedding the excess queues until
// deadlines expire and goodput collapses; with it the excess is refused
// at once and the admitted calls keep their latency. Run it alone: go test -run '^$' -bench
// Overload -benchtime 1x ./internal/shed/
func BenchmarkOverload(b *testing.B) {
	for _, tc := range []struct {
		name     string
		shedding config.Shedding
	}{
		{"shedding", config.Shedding{Enabled: true, MinLimit: 1, MaxLimit: 64, InitialLimit: 4, LowPriorityShare: 0.5, RetryAfter: time.Second}},
		{"no-shedding", config.Shedding{}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := overloadServer(b, tc.shedding)
			for b.Loop() {
				capacity, unloaded := capacity(c, 2*time.Second)
				// Let the limit settle under the overload first.
				_, _, _ = openLoop(c, 3*capacity, 2*time.Second, time.Second)
				goodput, p99, refused := openLoop(c, 3*capacity, 4*time.Second, time.Second)
				b.ReportMetric(capacity, "capacity/s")
				b.ReportMetric(goodput/capacity, "goodput/capacity")
				b.ReportMetric(float64(p99)/float64(unloaded), "p99/unloaded-p99")
				b.ReportMetric(float64(refused), "refused")
			}
		})
	}
}
