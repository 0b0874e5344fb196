package service_test

import (
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/boot"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// TestLoginTokensSignedWithTheNewestKey: while KEEL_TOKEN_KEY holds a new
// and an old key, the user service signs login tokens with the new one
// (the edges, given both keys first, believe either). A short key among
// them stops the service from starting, naming the variable.
func TestLoginTokensSignedWithTheNewestKey(t *testing.T) {
	newKey := "the-new-token-key-the-new-token-key"
	oldKey := "the-old-token-key-the-old-token-key"
	start := func(tokenKey string) (*boot.Running, error) {
		return startUser(t, map[string]string{userservice.TokenKeyVar: tokenKey})
	}
	if _, err := start(newKey + ",short"); err == nil || !strings.Contains(err.Error(), userservice.TokenKeyVar) {
		t.Fatalf("a short key among the token keys: %v, want an error naming %s", err, userservice.TokenKeyVar)
	}
	r, err := start(newKey + ", " + oldKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	users := userv1connect.NewUserServiceClient(http.DefaultClient, "http://"+r.Instance.Addr)
	if _, err := users.Register(ctx, connect.NewRequest(&userv1.RegisterRequest{Email: "rotate@example.com", Password: "correct horse", DisplayName: "R"})); err != nil {
		t.Fatal(err)
	}
	res, err := users.Login(ctx, connect.NewRequest(&userv1.LoginRequest{Email: "rotate@example.com", Password: "correct horse"}))
	if err != nil {
		t.Fatal(err)
	}
	token := res.Msg.GetAccessToken()
	if _, err := auth.Verify([]byte(newKey), "", token); err != nil {
		t.Errorf("the login token does not verify under the new key: %v", err)
	}
	if _, err := auth.Verify([]byte(oldKey), "", token); err == nil {
		t.Error("the login token was signed with the old key")
	}
}
