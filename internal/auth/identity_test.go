package auth_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keelplatform/keel/internal/auth"
)

var identityKey = []byte("identity-key-identity-key-identity-key")

// whoAmI serves one procedure that answers with the caller's user id
// ("" when anonymous), behind the Identities interceptor; next, when
// set, is called from the handler (a service calling its peer) and its
// answer returned instead.
func whoAmI(t *testing.T, ids *auth.Identities, next *connect.Client[emptypb.Empty, wrapperspb.StringValue]) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/test.Who/Am", connect.NewUnaryHandler("/test.Who/Am",
		func(ctx context.Context, _ *connect.Request[emptypb.Empty]) (*connect.Response[wrapperspb.StringValue], error) {
			if next != nil {
				return next.CallUnary(ctx, connect.NewRequest(&emptypb.Empty{}))
			}
			user, _ := auth.UserFrom(ctx)
			return connect.NewResponse(wrapperspb.String(user)), nil
		}, connect.WithInterceptors(ids)))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func whoClient(url string, ids *auth.Identities) *connect.Client[emptypb.Empty, wrapperspb.StringValue] {
	var opts []connect.ClientOption
	if ids != nil {
		opts = append(opts, connect.WithInterceptors(ids))
	}
	return connect.NewClient[emptypb.Empty, wrapperspb.StringValue](http.DefaultClient, url+"/test.Who/Am", opts...)
}

func ask(t *testing.T, c *connect.Client[emptypb.Empty, wrapperspb.StringValue], identity string) (string, error) {
	t.Helper()
	req := connect.NewRequest(&emptypb.Empty{})
	if identity != "" {
		req.Header().Set(auth.IdentityHeader, identity)
	}
	res, err := c.CallUnary(t.Context(), req)
	if err != nil {
		return "", err
	}
	return res.Msg.GetValue(), nil
}

func TestIdentitiesVerifyWhatTheEdgeSigned(t *testing.T) {
	ids, err := auth.NewIdentities(identityKey)
	if err != nil {
		t.Fatal(err)
	}
	c := whoClient(whoAmI(t, ids, nil), nil)

	good, _, err := auth.SignIdentity(identityKey, "user-7")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ask(t, c, good); err != nil || got != "user-7" {
		t.Fatalf("signed identity: got %q, %v; want user-7", got, err)
	}
	if got, err := ask(t, c, ""); err != nil || got != "" {
		t.Fatalf("no identity: got %q, %v; want an anonymous call", got, err)
	}

	otherKey := []byte("another-key-another-key-another-key!!")
	forged, _, _ := auth.SignIdentity(otherKey, "user-7")
	// A login token signed with the identity key is still not an
	// identity: the issuer differs.
	login, _, _ := auth.Issuer{Key: identityKey, TTL: time.Minute}.Issue("user-7")
	past := time.Now().Add(-time.Hour)
	expired, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Issuer: "keel-edge", Subject: "user-7",
		IssuedAt: jwt.NewNumericDate(past), ExpiresAt: jwt.NewNumericDate(past.Add(time.Minute)),
	}).SignedString(identityKey)
	for name, token := range map[string]string{
		"another key": forged,
		"login token": login,
		"expired":     expired,
		"garbage":     "not.a.token",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ask(t, c, token)
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Fatalf("got %v, want unauthenticated", err)
			}
		})
	}
}

func TestIdentitiesWithoutKeyBelieveNone(t *testing.T) {
	ids, err := auth.NewIdentities(nil)
	if err != nil {
		t.Fatal(err)
	}
	c := whoClient(whoAmI(t, ids, nil), nil)
	good, _, _ := auth.SignIdentity(identityKey, "user-7")
	if _, err := ask(t, c, good); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("got %v, want unauthenticated from a service with no identity key", err)
	}
	if _, err := auth.NewIdentities([]byte("short")); !errors.Is(err, auth.ErrKeyTooShort) {
		t.Fatalf("short key: got %v, want ErrKeyTooShort", err)
	}
}

// TestIdentitiesFollowTheCall: a service acting for a user calls its
// peer as that user, and a call the service makes on its own is
// anonymous.
func TestIdentitiesFollowTheCall(t *testing.T) {
	ids, err := auth.NewIdentities(identityKey)
	if err != nil {
		t.Fatal(err)
	}
	peer := whoAmI(t, ids, nil)
	front := whoClient(whoAmI(t, ids, whoClient(peer, ids)), nil)

	good, _, _ := auth.SignIdentity(identityKey, "user-9")
	if got, err := ask(t, front, good); err != nil || got != "user-9" {
		t.Fatalf("peer saw %q, %v; want user-9", got, err)
	}
	if got, err := ask(t, front, ""); err != nil || got != "" {
		t.Fatalf("peer saw %q, %v; want anonymous", got, err)
	}
}

func TestRequireOwner(t *testing.T) {
	ctx := t.Context()
	if err := auth.RequireOwner(ctx, "user-1", "order o-1"); err != nil {
		t.Fatalf("the platform's own call: %v", err)
	}
	as1 := auth.WithUser(ctx, "user-1", "token")
	if err := auth.RequireOwner(as1, "user-1", "order o-1"); err != nil {
		t.Fatalf("owner: %v", err)
	}
	err := auth.RequireOwner(as1, "user-2", "order o-2")
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Fatalf("another's order: got %v, want permission_denied", err)
	}
	if msg := err.Error(); msg != "permission_denied: order o-2 belongs to another user" {
		t.Fatalf("message %q", msg)
	}
}
