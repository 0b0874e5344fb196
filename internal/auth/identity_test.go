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
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	inventoryv1 "github.com/keelplatform/keel/gen/go/shop/inventory/v1"
	"github.com/keelplatform/keel/internal/auth"
)

var identityKey = []byte("identity-key-identity-key-identity-key")

// whoAmI serves one procedure that answers with the caller's user id
// ("" when anonymous or a process), behind the Identities interceptor, as
// a method that needs a login; next, when set, is called from the
// handler (a service calling its peer) and its answer returned instead.
func whoAmI(t *testing.T, ids *auth.Identities, next *connect.Client[emptypb.Empty, wrapperspb.StringValue]) string {
	t.Helper()
	return serveAs(t, ids, nil, next)
}

// serveAs is whoAmI for the method md of a contract (nil: none known).
func serveAs(t *testing.T, ids *auth.Identities, md protoreflect.MethodDescriptor, next *connect.Client[emptypb.Empty, wrapperspb.StringValue]) string {
	t.Helper()
	opts := []connect.HandlerOption{connect.WithInterceptors(ids)}
	if md != nil {
		opts = append(opts, connect.WithSchema(md))
	}
	mux := http.NewServeMux()
	mux.Handle("/test.Who/Am", connect.NewUnaryHandler("/test.Who/Am",
		func(ctx context.Context, _ *connect.Request[emptypb.Empty]) (*connect.Response[wrapperspb.StringValue], error) {
			if next != nil {
				return next.CallUnary(ctx, connect.NewRequest(&emptypb.Empty{}))
			}
			user, _ := auth.UserFrom(ctx)
			return connect.NewResponse(wrapperspb.String(user)), nil
		}, opts...))
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
	ids, err := auth.NewIdentities(identityKey, "test")
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
	if _, err := ask(t, c, ""); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("no identity: %v; want unauthenticated, the method needs a login", err)
	}
	process, _, _ := auth.SignProcess(identityKey, "order")
	if got, err := ask(t, c, process); err != nil || got != "" {
		t.Fatalf("a process's identity: got %q, %v; want the call, for no user", got, err)
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
	ids, err := auth.NewIdentities(nil, "test")
	if err != nil {
		t.Fatal(err)
	}
	c := whoClient(whoAmI(t, ids, nil), nil)
	good, _, _ := auth.SignIdentity(identityKey, "user-7")
	if _, err := ask(t, c, good); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("got %v, want unauthenticated from a service with no identity key", err)
	}
	if got, err := ask(t, c, ""); err != nil || got != "" {
		t.Fatalf("no identity, no key: got %q, %v; want an anonymous call", got, err)
	}
	if _, err := auth.NewIdentities([]byte("short"), "test"); !errors.Is(err, auth.ErrKeyTooShort) {
		t.Fatalf("short key: got %v, want ErrKeyTooShort", err)
	}
}

// TestIdentitiesFollowTheCall: a service acting for a user calls its
// peer as that user, and one acting for no user calls as itself, a
// process of the platform (the peer's method needs a login, and takes
// it).
func TestIdentitiesFollowTheCall(t *testing.T) {
	ids, err := auth.NewIdentities(identityKey, "test")
	if err != nil {
		t.Fatal(err)
	}
	peer := whoAmI(t, ids, nil)
	front := whoClient(whoAmI(t, ids, whoClient(peer, ids)), nil)

	good, _, _ := auth.SignIdentity(identityKey, "user-9")
	if got, err := ask(t, front, good); err != nil || got != "user-9" {
		t.Fatalf("peer saw %q, %v; want user-9", got, err)
	}
	process, _, _ := auth.SignProcess(identityKey, "saga")
	if got, err := ask(t, front, process); err != nil || got != "" {
		t.Fatalf("peer saw %q, %v; want a process's call, for no user", got, err)
	}
}

// TestIdentitiesApplyTheContract: a service holds its own callers to the
// contract as the edge does: a public method takes anyone, an internal
// one only the platform's processes, never a user.
func TestIdentitiesApplyTheContract(t *testing.T) {
	ids, err := auth.NewIdentities(identityKey, "inventory")
	if err != nil {
		t.Fatal(err)
	}
	methods := inventoryv1.File_shop_inventory_v1_inventory_proto.Services().ByName("InventoryService").Methods()
	public := whoClient(serveAs(t, ids, methods.ByName("GetItem"), nil), nil)
	internal := whoClient(serveAs(t, ids, methods.ByName("ReserveStock"), nil), nil)
	user, _, _ := auth.SignIdentity(identityKey, "user-7")
	process, _, _ := auth.SignProcess(identityKey, "order")

	for name, tc := range map[string]struct {
		c        *connect.Client[emptypb.Empty, wrapperspb.StringValue]
		identity string
		want     connect.Code
	}{
		"public, anonymous":   {public, "", 0},
		"public, a user":      {public, user, 0},
		"internal, anonymous": {internal, "", connect.CodeUnauthenticated},
		"internal, a user":    {internal, user, connect.CodePermissionDenied},
		"internal, a process": {internal, process, 0},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ask(t, tc.c, tc.identity)
			if connect.CodeOf(err) != tc.want && !(tc.want == 0 && err == nil) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
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

// TestIdentityKeyRotates: with two keys in the environment's value, a
// service believes identity signed with either and signs its own with
// the first, so that the rollout the README gives ("old,new", "new,old",
// "new") never refuses a call; once the old key is dropped, what it
// signed is refused.
func TestIdentityKeyRotates(t *testing.T) {
	oldKey := []byte("the-old-identity-key-the-old-identity-key")
	newKey := []byte("the-new-identity-key-the-new-identity-key")
	during, err := auth.NewIdentities(append(append(append([]byte{}, newKey...), ", "...), oldKey...), "during")
	if err != nil {
		t.Fatal(err)
	}
	after, err := auth.NewIdentities(newKey, "after")
	if err != nil {
		t.Fatal(err)
	}
	signedOld, _, _ := auth.SignIdentity(oldKey, "user-1")
	signedNew, _, _ := auth.SignIdentity(newKey, "user-1")

	c := whoClient(whoAmI(t, during, nil), nil)
	for name, token := range map[string]string{"old key": signedOld, "new key": signedNew} {
		if got, err := ask(t, c, token); err != nil || got != "user-1" {
			t.Fatalf("during the rotation, identity signed with the %s: %q, %v", name, got, err)
		}
	}
	// A process with both keys calls its peers with the new one: a peer
	// that already dropped the old key believes it.
	peerAfter := whoAmI(t, after, nil)
	front := whoClient(whoAmI(t, during, whoClient(peerAfter, during)), nil)
	process, _, _ := auth.SignProcess(newKey, "saga")
	if _, err := ask(t, front, process); err != nil {
		t.Fatalf("a call signed by a process during the rotation, at a peer after it: %v", err)
	}
	if _, err := ask(t, whoClient(peerAfter, nil), signedOld); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("after the rotation, identity signed with the old key: %v, want unauthenticated", err)
	}
	// The rollout's steps: "old,new" signs with the old key, which the
	// processes not yet updated believe; "new,old" signs with the new,
	// which the processes still at the first step believe.
	before, err := auth.NewIdentities(oldKey, "before")
	if err != nil {
		t.Fatal(err)
	}
	step1, err := auth.NewIdentities([]byte(string(oldKey)+","+string(newKey)), "step1")
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*connect.Client[emptypb.Empty, wrapperspb.StringValue]{
		"a process at step 1 calling one not yet updated": whoClient(whoAmI(t, before, nil), step1),
		"a process at step 2 calling one at step 1":       whoClient(whoAmI(t, step1, nil), during),
		"a process at step 2 calling one at step 3":       whoClient(whoAmI(t, after, nil), during),
	} {
		if _, err := c.CallUnary(t.Context(), connect.NewRequest(&emptypb.Empty{})); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := auth.NewIdentities([]byte(string(newKey)+",short"), "x"); !errors.Is(err, auth.ErrKeyTooShort) {
		t.Fatalf("a short key among several: %v, want ErrKeyTooShort", err)
	}
}
