package shed_test

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	_ "google.golang.org/protobuf/types/known/emptypb" // the stream contract's messages

	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/shed"
)

// held is a handler that holds each call until the gate opens, counting
// those it holds.
type held struct {
	gate *gate
	mu   sync.Mutex
	n    int
}

func (h *held) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.n++
	h.mu.Unlock()
	h.gate.hold(r.Context())
}

func (h *held) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// post sends a POST to path through h in the background and returns the
// channel its status comes on.
func post(h http.Handler, path string) <-chan int {
	out := make(chan int, 1)
	go func() {
		req := httptest.NewRequest(http.MethodPost, path, nil)
		req.Header.Set("Content-Type", "application/proto")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		out <- rec.Code
	}()
	return out
}

// status waits for the status of a call sent with post, or fails t
// after 15s (a call held that should not be).
func status(t *testing.T, what string, ch <-chan int) int {
	t.Helper()
	select {
	case code := <-ch:
		return code
	case <-time.After(15 * time.Second):
		t.Fatalf("timed out waiting for the answer to %s", what)
		return 0
	}
}

// pinned is shedding with a limit that does not move from n.
func pinned(n int) config.Shedding {
	return config.Shedding{Enabled: true, MinLimit: n, MaxLimit: n, InitialLimit: n, LowPriorityShare: 0.5, RetryAfter: time.Second}
}

// TestSettingsChangeTakesEffect: a new limit applies to the calls that
// arrive from then on; disabled, nothing is shed; and Limit reports the
// limit in effect, 0 while shedding is off.
func TestSettingsChangeTakesEffect(t *testing.T) {
	t.Parallel()
	l, err := shed.NewLimiter(pinned(1), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	g := newGate()
	t.Cleanup(g.open)
	h := &held{gate: g}
	mw := l.Middleware(h)
	if got := l.Limit(); got != 1 {
		t.Fatalf("Limit() = %d, want 1", got)
	}
	var statuses []<-chan int
	statuses = append(statuses, post(mw, userv1connect.UserServiceGetUserProcedure))
	waitFor(t, "one call is held", func() bool { return h.count() == 1 })
	if code := status(t, "a second call", post(mw, userv1connect.UserServiceGetUserProcedure)); code != http.StatusTooManyRequests {
		t.Fatalf("a second call with a limit of 1: %d, want 429", code)
	}

	l.Set(pinned(3))
	if got := l.Limit(); got != 3 {
		t.Fatalf("Limit() = %d after a change to 3", got)
	}
	for range 2 {
		statuses = append(statuses, post(mw, userv1connect.UserServiceGetUserProcedure))
	}
	waitFor(t, "two more calls are held", func() bool { return h.count() == 3 })
	l.Set(pinned(3)) // the same settings again: nothing changes

	l.Set(config.Shedding{})
	if got := l.Limit(); got != 0 {
		t.Fatalf("Limit() = %d with shedding off, want 0", got)
	}
	for range 5 {
		statuses = append(statuses, post(mw, userv1connect.UserServiceGetUserProcedure))
	}
	waitFor(t, "every call is held with shedding off", func() bool { return h.count() == 8 })

	l.Set(pinned(1))
	if got := l.Limit(); got != 1 {
		t.Fatalf("Limit() = %d after a change back to 1", got)
	}
	g.open()
	for _, ch := range statuses {
		if code := status(t, "an admitted call", ch); code != http.StatusOK {
			t.Fatalf("an admitted call: %d", code)
		}
	}
}

// registerStreams registers, once, a contract with streaming methods, as
// a service's generated code does: keel.test.v1.StreamService with Watch
// (server streaming), Upload (client streaming), Chat (both) and Get
// (unary).
var registerStreams = sync.OnceValue(func() error {
	empty := proto.String(".google.protobuf.Empty")
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:       proto.String("keel/test/v1/stream.proto"),
		Package:    proto.String("keel.test.v1"),
		Syntax:     proto.String("proto3"),
		Dependency: []string{"google/protobuf/empty.proto"},
		Service: []*descriptorpb.ServiceDescriptorProto{{
			Name: proto.String("StreamService"),
			Method: []*descriptorpb.MethodDescriptorProto{
				{Name: proto.String("Watch"), InputType: empty, OutputType: empty, ServerStreaming: proto.Bool(true)},
				{Name: proto.String("Upload"), InputType: empty, OutputType: empty, ClientStreaming: proto.Bool(true)},
				{Name: proto.String("Chat"), InputType: empty, OutputType: empty, ClientStreaming: proto.Bool(true), ServerStreaming: proto.Bool(true)},
				{Name: proto.String("Get"), InputType: empty, OutputType: empty},
			},
		}},
	}, protoregistry.GlobalFiles)
	if err != nil {
		return err
	}
	return protoregistry.GlobalFiles.RegisterFile(fd)
})

// TestStreamsAndOperatorsEndpointsAreNeverShed: at the limit, a call to a
// method that streams (its duration says nothing of saturation), health,
// reflection, metrics and the debug endpoints still get through; a unary
// call of the same contract is shed.
func TestStreamsAndOperatorsEndpointsAreNeverShed(t *testing.T) {
	t.Parallel()
	if err := registerStreams(); err != nil {
		t.Fatal(err)
	}
	l, err := shed.NewLimiter(pinned(1), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	g := newGate()
	t.Cleanup(g.open)
	h := &held{gate: g}
	mw := l.Middleware(h)
	first := post(mw, userv1connect.UserServiceGetUserProcedure)
	waitFor(t, "a call holds the only room", func() bool { return h.count() == 1 })
	if code := status(t, "a unary call", post(mw, "/keel.test.v1.StreamService/Get")); code != http.StatusTooManyRequests {
		t.Fatalf("a unary call at the limit: %d, want 429", code)
	}
	passed := []<-chan int{first}
	for i, path := range []string{
		"/keel.test.v1.StreamService/Watch",
		"/keel.test.v1.StreamService/Upload",
		"/keel.test.v1.StreamService/Chat",
		"/grpc.health.v1.Health/Check",
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
		"/metrics",
		"/debug/pprof/heap",
	} {
		passed = append(passed, post(mw, path))
		waitFor(t, path+" gets through at the limit", func() bool { return h.count() == i+2 })
	}
	g.open()
	for _, ch := range passed {
		if code := status(t, "a call let through", ch); code != http.StatusOK {
			t.Fatalf("a call let through: %d", code)
		}
	}
}
