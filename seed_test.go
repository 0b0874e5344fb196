package keel_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/internal/config"
)

// seedDir holds the seed files, consul/kv/<env>/<service>.yaml.
const seedDir = "consul/kv"

// seedSchemas checks the seed files of every process of the platform's
// one list ([platform.All]) against its real settings type.
func seedSchemas() []seedSchema {
	var schemas []seedSchema
	for _, p := range platform.All() {
		schemas = append(schemas, schemaOf(p))
	}
	return schemas
}

// seedSchema checks one process's seed file of one environment.
type seedSchema struct {
	service string
	check   func(t *testing.T, env config.Env)
}

// schemaOf checks p's seed files against its settings type and its
// Validate method, the way the process reads them when it runs without
// Consul and the way `keel config push` checks them before writing.
func schemaOf(p platform.Process) seedSchema {
	return seedSchema{service: p.Name, check: func(t *testing.T, env config.Env) {
		t.Helper()
		cfg, err := p.Settings(t.Context(), env, seedDir)
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		path := filepath.Join(seedDir, string(env), p.Name+".yaml")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.CheckSeed(path, data); err != nil {
			t.Errorf("keel config push would refuse it: %v", err)
		}
		if env == config.EnvProd && cfg.Server.DrainDelay <= 0 {
			t.Errorf("prod: server/drain_delay is %v; it should let balancers notice shutdown", cfg.Server.DrainDelay)
		}
	}}
}

// TestSeedFiles checks every seed file of every environment against the
// real settings type of its process: no unknown key, every value of the
// right type and accepted by the type's Validate method. Every file must
// belong to a process of the platform, and every process must have a
// file in every environment.
func TestSeedFiles(t *testing.T) {
	t.Parallel()
	schemas := seedSchemas()
	var services []string
	for _, s := range schemas {
		services = append(services, s.service)
	}
	for _, env := range config.Envs() {
		t.Run(string(env), func(t *testing.T) {
			t.Parallel()
			entries, err := os.ReadDir(filepath.Join(seedDir, string(env)))
			if err != nil {
				t.Fatal(err)
			}
			var files []string
			for _, e := range entries {
				name, ok := strings.CutSuffix(e.Name(), ".yaml")
				if !ok || e.IsDir() {
					t.Errorf("%s: %s is not a seed file (<service>.yaml)", env, e.Name())
					continue
				}
				files = append(files, name)
				if !slices.Contains(services, name) {
					t.Errorf("%s: %s.yaml has no settings type to check it against: add the service to platform.Services", env, name)
				}
			}
			for _, s := range schemas {
				if !slices.Contains(files, s.service) {
					t.Errorf("%s: no seed file %s.yaml", env, s.service)
					continue
				}
				t.Run(s.service, func(t *testing.T) {
					t.Parallel()
					s.check(t, env)
				})
			}
		})
	}
}

// TestLocalAddressesDistinct: in local, where `keel up` runs every
// process of the platform on one machine, no two listen on the same
// address.
func TestLocalAddressesDistinct(t *testing.T) {
	t.Parallel()
	owner := map[string]string{}
	for _, p := range platform.All() {
		cfg, err := p.Settings(t.Context(), config.EnvLocal, seedDir)
		if err != nil {
			t.Fatalf("%s: %v", p.Name, err)
		}
		for _, addr := range []string{cfg.Server.Addr, cfg.Server.AdminAddr} {
			if addr == "" || strings.HasSuffix(addr, ":0") {
				continue
			}
			if other, ok := owner[addr]; ok {
				t.Errorf("%s and %s both listen on %s", other, p.Name, addr)
			}
			owner[addr] = p.Name
		}
	}
}

// TestProdCORSNamesItsOrigins: in prod the edge allows no browser origin
// by wildcard; the origins of the shop's own pages are listed.
func TestProdCORSNamesItsOrigins(t *testing.T) {
	t.Parallel()
	s, err := config.Load(t.Context(), config.Options[edge.Settings]{
		Service: "edge", Env: config.EnvProd, Dir: seedDir, Defaults: edge.DefaultSettings(),
		LookupEnv: func(string) (string, bool) { return "", false },
	})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(s.AllowedOrigins, "*") {
		t.Fatalf("prod edge allowed_origins %v holds a wildcard", s.AllowedOrigins)
	}
}

// TestSeedFilesInjectNoFaults: chaos drills are switched on at run time,
// in KV, never by a seed file; and no environment's canary is left on by
// one either.
func TestSeedFilesInjectNoFaults(t *testing.T) {
	t.Parallel()
	noEnv := func(string) (string, bool) { return "", false }
	for _, env := range config.Envs() {
		s, err := config.Load(t.Context(), config.Options[edge.Settings]{
			Service: edge.Name, Env: env, Dir: seedDir, Defaults: edge.DefaultSettings(), LookupEnv: noEnv,
		})
		if err != nil {
			t.Fatalf("%s: %v", env, err)
		}
		if len(s.Faults) > 0 || len(s.Canary) > 0 {
			t.Errorf("%s/edge.yaml: faults %v, canary %v; want both empty", env, s.Faults, s.Canary)
		}
	}
}
