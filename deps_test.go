package keel_test

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/keelplatform/keel"

// TestDependencyRule enforces the one-way dependency rule of DESIGN.md on
// every package and everything it imports, directly or not:
//
//   - gen imports nothing of Keel but gen;
//   - internal imports none of services, edge, consul, cmd;
//   - consul imports none of services, edge, cmd;
//   - edge imports none of services, cmd;
//   - a service imports no other service: it reaches peers through gen.
func TestDependencyRule(t *testing.T) {
	out, err := exec.Command("go", "list", "-json=ImportPath,Deps", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	checked := 0
	for {
		var pkg struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&pkg); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		checked++
		from := strings.TrimPrefix(strings.TrimPrefix(pkg.ImportPath, module), "/")
		for _, dep := range pkg.Deps {
			if !strings.HasPrefix(dep, module+"/") {
				continue
			}
			to := strings.TrimPrefix(dep, module+"/")
			if why := forbidden(from, to); why != "" {
				t.Errorf("%s imports %s: %s", from, to, why)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("only %d packages listed", checked)
	}
}

func forbidden(from, to string) string {
	top := func(p string) string { first, _, _ := strings.Cut(p, "/"); return first }
	switch top(from) {
	case "gen":
		if top(to) != "gen" {
			return "generated code depends on nothing but generated code"
		}
	case "internal":
		if t := top(to); t == "services" || t == "edge" || t == "consul" || t == "cmd" {
			return "internal imports none of services, edge, consul, cmd"
		}
	case "consul":
		if t := top(to); t == "services" || t == "edge" || t == "cmd" {
			return "consul imports none of services, edge, cmd"
		}
	case "edge":
		if t := top(to); t == "services" || t == "cmd" {
			return "edge reaches services only through gen clients"
		}
	case "services":
		if top(to) == "services" && service(from) != service(to) {
			return "a service reaches a peer only through gen clients"
		}
	}
	return ""
}

// service returns the name of the service a services/... path belongs to.
func service(path string) string {
	parts := strings.SplitN(path, "/", 3)
	if len(parts) < 2 {
		return ""
	}
	return parts[1]
}
