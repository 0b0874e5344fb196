package auth_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keelplatform/keel/internal/auth"
)

// TestSplitKeys: a key of exactly MinKeyLen bytes is long enough, one
// byte less is not, and the error names which key of how many is short.
func TestSplitKeys(t *testing.T) {
	exact := bytes.Repeat([]byte("k"), auth.MinKeyLen)
	keys, err := auth.SplitKeys(append(append(append([]byte{}, exact...), " , "...), exact...))
	if err != nil || len(keys) != 2 || !bytes.Equal(keys[0], exact) || !bytes.Equal(keys[1], exact) {
		t.Fatalf("two keys of %d bytes: got %q, %v", auth.MinKeyLen, keys, err)
	}
	short := exact[:auth.MinKeyLen-1]
	_, err = auth.SplitKeys(append(append(append([]byte{}, exact...), ',', ','), short...))
	if !errors.Is(err, auth.ErrKeyTooShort) {
		t.Fatalf("a key of %d bytes: got %v, want ErrKeyTooShort", len(short), err)
	}
	if !strings.Contains(err.Error(), "key 2 of 3") {
		t.Fatalf("error %q does not say key 2 of 3 is short", err)
	}
}

// TestProcessIdentityIsReused: a process calling its peers on its own
// behalf sends the identity token it signed while it is young, rather
// than signing one per call (a token signed in a later second differs).
func TestProcessIdentityIsReused(t *testing.T) {
	ids, err := auth.NewIdentities(identityKey, "saga")
	if err != nil {
		t.Fatal(err)
	}
	sent := make(chan string, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sent <- r.Header.Get(auth.IdentityHeader)
		w.Header().Set("Content-Type", "application/proto")
		_, _ = w.Write(nil)
	}))
	t.Cleanup(srv.Close)
	c := connect.NewClient[emptypb.Empty, wrapperspb.StringValue](http.DefaultClient, srv.URL+"/test.Who/Am", connect.WithInterceptors(ids))
	call := func() string {
		t.Helper()
		if _, err := c.CallUnary(auth.AsPlatform(context.Background()), connect.NewRequest(&emptypb.Empty{})); err != nil {
			t.Fatal(err)
		}
		return <-sent
	}

	first := call()
	if sub, process, err := auth.VerifyCaller(identityKey, first); err != nil || sub != "saga" || !process {
		t.Fatalf("process identity: %q, %v, %v", sub, process, err)
	}
	signedIn := time.Now().Unix()
	waitFor(t, "the next second", func() bool { return time.Now().Unix() > signedIn })
	if again := call(); again != first {
		t.Fatal("a second call a second later sent a newly signed identity, want the one signed for the first")
	}
}
