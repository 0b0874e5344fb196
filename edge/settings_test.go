package edge_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keelplatform/keel/edge"
	"github.com/keelplatform/keel/internal/config"
)

// TestSeedFilesAreValid checks the edge's file of every environment
// against its settings type and rules.
func TestSeedFilesAreValid(t *testing.T) {
	for _, env := range config.Envs() {
		path := filepath.Join("..", "consul", "kv", string(env), edge.Name+".yaml")
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := config.CheckFile(path, data, edge.DefaultSettings()); err != nil {
			t.Errorf("%s: %v", env, err)
		}
	}
}
