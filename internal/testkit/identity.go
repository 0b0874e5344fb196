package testkit

import (
	"testing"

	"connectrpc.com/connect"

	"github.com/keelplatform/keel/internal/auth"
)

// AsPlatform is a client option whose calls carry the identity of a
// process of the platform (named name), signed with identityKey: what a
// test needs to call a service's internal methods directly, as the
// platform's own processes do.
func AsPlatform(tb testing.TB, identityKey, name string) connect.ClientOption {
	tb.Helper()
	ids, err := auth.NewIdentities([]byte(identityKey), name)
	if err != nil {
		tb.Fatal(err)
	}
	return connect.WithInterceptors(ids)
}
