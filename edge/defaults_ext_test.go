package edge_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/gen/go/shop/user/v1/userv1connect"
	"github.com/keelplatform/keel/internal/auth"
	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
)

// bootBareEdge boots the edge process as cmd/edge does where it finds no
// configuration files (run outside the repository, or an image without
// them): built-in defaults and the environment vars only, on a loopback
// port of its own. It returns the edge's URL, or how its start failed.
func bootBareEdge(t *testing.T, vars map[string]string) (string, error) {
	t.Helper()
	env := map[string]string{"KEEL_SERVER_ADDR": "127.0.0.1:0", "KEEL_LOG_LEVEL": "warn"}
	for k, v := range vars {
		env[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := boot.Start(ctx, edge.Service([]string{userv1connect.UserServiceName}), boot.Options{
		ConfigDir: t.TempDir() + "/none",
		Backend:   boot.Static{Discovery: discovery.NewStatic()},
		Log:       io.Discard,
		LookupEnv: func(name string) (string, bool) { v, ok := env[name]; return v, ok },
	})
	if err != nil {
		cancel()
		return "", err
	}
	t.Cleanup(func() { cancel(); _ = r.Wait() })
	return "http://" + r.Instance.Addr, nil
}

// preflight sends the CORS preflight a browser on origin sends before a
// Connect call through the edge at url, and returns the answer's
// Access-Control-Allow-Origin.
func preflight(t *testing.T, url, origin string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodOptions, url+userv1connect.UserServiceGetUserProcedure, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", http.MethodPost)
	req.Header.Set("Access-Control-Request-Headers", "authorization,connect-protocol-version,content-type")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.Header.Get("Access-Control-Allow-Origin")
}

// TestEdgeWithoutConfigurationAllowsNoOrigin: the built-in defaults allow
// no cross-origin call from a browser; only an origin the configuration
// names is allowed.
func TestEdgeWithoutConfigurationAllowsNoOrigin(t *testing.T) {
	t.Parallel()
	keys := map[string]string{auth.IdentityKeyVar: string(identityKey), auth.TokenKeyVar: string(tokenKey)}
	bare, err := bootBareEdge(t, keys)
	if err != nil {
		t.Fatal(err)
	}
	if got := preflight(t, bare, "https://evil.example"); got != "" {
		t.Errorf("with no configuration, a preflight from https://evil.example is allowed: Access-Control-Allow-Origin %q", got)
	}

	// The control: an origin the configuration names is allowed, and
	// still no other.
	keys["KEEL_ALLOWED_ORIGINS"] = `["https://shop.example"]`
	configured, err := bootBareEdge(t, keys)
	if err != nil {
		t.Fatal(err)
	}
	if got := preflight(t, configured, "https://shop.example"); got != "https://shop.example" {
		t.Errorf("a preflight from the configured origin: Access-Control-Allow-Origin %q", got)
	}
	if got := preflight(t, configured, "https://evil.example"); got != "" {
		t.Errorf("a preflight from https://evil.example with only https://shop.example configured: Access-Control-Allow-Origin %q", got)
	}
}

// TestEdgeRefusesToStartWithoutIdentityKey: the edge signs the identity
// the services believe, so in any environment it does not start without
// the identity key, and says what to set.
func TestEdgeRefusesToStartWithoutIdentityKey(t *testing.T) {
	t.Parallel()
	for _, env := range []config.Env{config.EnvLocal, config.EnvTest, config.EnvProd} {
		_, err := bootBareEdge(t, map[string]string{config.EnvVar: string(env), auth.TokenKeyVar: string(tokenKey)})
		if err == nil {
			t.Fatalf("%s: the edge started without %s", env, auth.IdentityKeyVar)
		}
		for _, want := range []string{auth.IdentityKeyVar, "at least 32 bytes"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: the refusal %q does not say %q", env, err, want)
			}
		}
	}
}
