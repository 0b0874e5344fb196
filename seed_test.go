package keel_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/internal/config"
	userservice "github.com/keelplatform/keel/services/user/service"
)

// seedDir holds the seed files, consul/kv/<env>/<service>.yaml.
const seedDir = "consul/kv"

// seedSchemas lists every process that has seed files, with its real
// settings type. A new service adds one line here; TestSeedFiles fails
// until it does.
var seedSchemas = []seedSchema{
	schemaOf(edge.Name, edge.DefaultSettings()),
	schemaOf(userservice.Name, userservice.DefaultSettings()),
}

// seedSchema checks one process's seed file of one environment.
type seedSchema struct {
	service string
	check   func(t *testing.T, env config.Env)
}

// schemaOf checks service's seed files against its settings type T and
// its Validate method, the way the process reads them when it runs
// without Consul (config.Load) and the way `keel config push` checks
// them before writing (config.CheckFile).
func schemaOf[T interface{ ProcessConfig() config.Process }](service string, defaults T) seedSchema {
	return seedSchema{service: service, check: func(t *testing.T, env config.Env) {
		t.Helper()
		cfg, err := config.Load(t.Context(), config.Options[T]{
			Service: service, Env: env, Dir: seedDir, Defaults: defaults,
			LookupEnv: func(string) (string, bool) { return "", false },
		})
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		path := filepath.Join(seedDir, string(env), service+".yaml")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := config.CheckFile(path, data, defaults); err != nil {
			t.Errorf("keel config push would refuse it: %v", err)
		}
		if env == config.EnvProd && cfg.ProcessConfig().Server.DrainDelay <= 0 {
			t.Errorf("prod: server/drain_delay is %v; it should let balancers notice shutdown", cfg.ProcessConfig().Server.DrainDelay)
		}
	}}
}

// TestSeedFiles checks every seed file of every environment against the
// real settings type of its process: no unknown key, every value of the
// right type and accepted by the type's Validate method. Every file must
// belong to a process in seedSchemas, and every process there must have a
// file in every environment.
func TestSeedFiles(t *testing.T) {
	t.Parallel()
	var services []string
	for _, s := range seedSchemas {
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
					t.Errorf("%s: %s.yaml has no settings type to check it against: add the service to seedSchemas", env, name)
				}
			}
			for _, s := range seedSchemas {
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
