package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/internal/depgraph"
)

// TestReadmeShowsTheGraph: the README's picture of the shop's services is
// what `keel graph` draws from the contracts now.
func TestReadmeShowsTheGraph(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"graph"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- keel graph -->\n```mermaid\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no <!-- keel graph --> mermaid block")
	}
	if string(m[1]) != out.String() {
		t.Fatalf("README.md's graph is stale; `keel graph` draws:\n%s\nthe README shows:\n%s", out.String(), m[1])
	}
}

// TestGraphCheckPassesOnTheRepository: the contracts and the code agree,
// and the graph has no cycle.
func TestGraphCheckPassesOnTheRepository(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"graph", "--check", "--root", "../.."}, &out, &out); err != nil {
		t.Fatalf("keel graph --check: %v\n%s", err, out.String())
	}
}

// writeService writes services/<name>/service/service.go under root with
// the given body.
func writeService(t *testing.T, root, name, body string) {
	t.Helper()
	dir := filepath.Join(root, "services", name, "service")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := "package service\n\nfunc build() {\n" + body + "}\n"
	if err := os.WriteFile(filepath.Join(dir, "service.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGraphCheckFindsMismatches: a peer the code calls that the contract
// does not declare, and a declared peer no code calls, each fail the
// check with a message naming them.
func TestGraphCheckFindsMismatches(t *testing.T) {
	g, err := platform.Graph()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	writeService(t, root, "order", `	client.Connect(p, "inventory", a)
	client.Connect(p, "payment", b)
	client.Connect(p, "user", c)
	client.Connect[any](p, "storefront", d)
`)
	writeService(t, root, "storefront", `	client.Connect(p, "inventory", a)
	client.Connect(p, "order", b)
	client.Connect(p, "payment", c)
`)
	for _, name := range []string{"user", "inventory", "payment"} {
		writeService(t, root, name, "")
	}
	err = checkGraph(g, root)
	if err == nil {
		t.Fatal("keel graph --check passed with an undeclared peer and an uncalled one")
	}
	for _, want := range []string{
		`service order calls peer "storefront", which its contract shop.order.v1.OrderService does not declare`,
		"services/order/service/service.go:7",
		"service storefront: its contract shop.storefront.v1.StorefrontService declares user in depends_on, but no code under services/storefront calls it",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if n := strings.Count(err.Error(), "\n") + 1; n != 2 {
		t.Errorf("%d problems reported, want 2:\n%v", n, err)
	}
}

// TestGraphCheckFindsACycle: a cycle fails the check with its path.
func TestGraphCheckFindsACycle(t *testing.T) {
	g, err := depgraph.FromDeps([]depgraph.Service{{Name: "order"}, {Name: "inventory"}},
		map[string][]string{"order": {"inventory"}, "inventory": {"order"}})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	writeService(t, root, "order", `	client.Connect(p, "inventory", a)
`)
	writeService(t, root, "inventory", `	client.Connect(p, "order", a)
`)
	if err := checkGraph(g, root); err == nil || !strings.Contains(err.Error(), "dependency cycle: order -> inventory -> order") {
		t.Fatalf("checkGraph of a cycle: %v", err)
	}
}
