package service_test

import (
	"net/http"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// heapPeak samples the live heap every millisecond until stop is closed
// and returns the highest value seen.
func heapPeak(stop <-chan struct{}) <-chan uint64 {
	out := make(chan uint64, 1)
	go func() {
		sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		var peak uint64
		for {
			metrics.Read(sample)
			peak = max(peak, sample[0].Value.Uint64())
			select {
			case <-stop:
				out <- peak
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return out
}

// TestLoginFloodKeepsMemoryBounded: 100 logins at once, each an argon2id
// hash of 19 MiB, would take about 2 GB at once. The hashing bulkhead
// runs two at a time, refuses the excess fast with resource_exhausted and
// a retry hint, and the heap stays near two hashes' worth.
func TestLoginFloodKeepsMemoryBounded(t *testing.T) {
	r, err := startUser(t, map[string]string{
		userservice.TokenKeyVar:                strings.Repeat("k", 32),
		"KEEL_PASSWORD_HASHING_MAX_CONCURRENT": "2",
		"KEEL_PASSWORD_HASHING_MAX_WAIT":       "50ms",
		"KEEL_PASSWORD_HASHING_MEMORY_KIB":     "19456",
		"KEEL_SHEDDING_MIN_LIMIT":              "200",
		"KEEL_SHEDDING_INITIAL_LIMIT":          "200",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	users := userv1connect.NewUserServiceClient(http.DefaultClient, "http://"+r.Instance.Addr)
	if _, err := users.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "flood@example.com", Password: "correct horse", DisplayName: "F"})); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	peak := heapPeak(stop)
	var answered, refused, other atomic.Int64
	var slowest atomic.Int64
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			began := time.Now()
			_, err := users.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: "flood@example.com", Password: "correct horse"}))
			var cerr *connect.Error
			switch {
			case err == nil:
				answered.Add(1)
			case connect.CodeOf(err) == connect.CodeResourceExhausted:
				refused.Add(1)
				if errorsAs(err, &cerr) && cerr.Meta().Get("Retry-After") == "" {
					t.Errorf("refusal without Retry-After: %v", err)
				}
				if took := time.Since(began); int64(took) > slowest.Load() {
					slowest.Store(int64(took))
				}
			default:
				other.Add(1)
				t.Errorf("unexpected: %v", err)
			}
		})
	}
	wg.Wait()
	close(stop)
	p := <-peak
	t.Logf("answered %d, refused %d; slowest refusal %v; heap peak %d MiB", answered.Load(), refused.Load(), time.Duration(slowest.Load()), p>>20)
	if answered.Load() < 2 || refused.Load() < 50 {
		t.Fatalf("answered %d, refused %d of 100: want the excess refused", answered.Load(), refused.Load())
	}
	if p > 300<<20 {
		t.Fatalf("heap peaked at %d MiB under the flood, want it bounded near two hashes' worth", p>>20)
	}
}

func errorsAs(err error, target **connect.Error) bool {
	e, ok := err.(*connect.Error)
	if ok {
		*target = e
	}
	return ok
}
