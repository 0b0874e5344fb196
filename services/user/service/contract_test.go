package service_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// TestContractRefusesControlCharacters: the contract's own rule on
// display names (which clients in every language read) answers before the
// handler does: the message is protovalidate's, naming the field and the
// rule.
func TestContractRefusesControlCharacters(t *testing.T) {
	env := map[string]string{
		userservice.TokenKeyVar:  "a-token-key-a-token-key-a-token-key",
		"KEEL_DATABASE_DATA_DIR": t.TempDir(),
		"KEEL_SERVER_ADDR":       "127.0.0.1:0",
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := boot.Start(ctx, userservice.Service(), boot.Options{
		Env:       config.EnvTest,
		ConfigDir: "../../../consul/kv",
		Log:       io.Discard,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = r.Wait() })
	users := userv1connect.NewUserServiceClient(http.DefaultClient, "http://"+r.Instance.Addr)
	_, err = users.Register(t.Context(), connect.NewRequest(&userv1.RegisterRequest{Email: "nul@example.com", Password: "correct horse", DisplayName: "two\nlines"}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "display_name: must not contain control characters") {
		t.Fatalf("Register with a line break in the name: %v, want the contract's invalid_argument", err)
	}
}
