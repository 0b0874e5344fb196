package service_test

import (
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// TestContractRefusesControlCharacters: the contract's own rule on
// display names (which clients in every language read) answers before the
// handler does: the message is protovalidate's, naming the field and the
// rule.
func TestContractRefusesControlCharacters(t *testing.T) {
	r, err := startUser(t, map[string]string{userservice.TokenKeyVar: "a-token-key-a-token-key-a-token-key"})
	if err != nil {
		t.Fatal(err)
	}
	users := userv1connect.NewUserServiceClient(http.DefaultClient, "http://"+r.Instance.Addr)
	_, err = users.Register(t.Context(), connect.NewRequest(&userv1.RegisterRequest{Email: "nul@example.com", Password: "correct horse", DisplayName: "two\nlines"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "display_name: must not contain control characters") {
		t.Fatalf("Register with a line break in the name: %v, want the contract's invalid_argument", err)
	}
}
