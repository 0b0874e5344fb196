package main

import (
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/keelplatform/keel/cmd/keel/platform"
	"github.com/keelplatform/keel/internal/depgraph"
)

// graph prints the platform's dependency graph as the contracts declare
// it, or with --check fails on a cycle and on any difference between
// what the contracts declare and the peers each service's code connects
// to.
func graph(args []string, stdout, stderr io.Writer) error {
	flags := flag.NewFlagSet("keel graph", flag.ContinueOnError)
	flags.SetOutput(stderr)
	format := flags.String("format", "mermaid", "output format: mermaid, dot or json")
	check := flags.Bool("check", false, "print nothing; fail on a dependency cycle, a peer the code calls that the contract does not declare, or a declared peer no code calls")
	root := flags.String("root", ".", "the repository root, whose services/<name>/ the check reads")
	if err := flags.Parse(args); err != nil {
		return err
	}
	g, err := platform.Graph()
	if err != nil {
		return err
	}
	if *check {
		if err := checkGraph(g, *root); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "keel graph: no cycle; every service's peers match its contract")
		return nil
	}
	switch *format {
	case "mermaid":
		_, err = io.WriteString(stdout, g.Mermaid())
	case "dot":
		_, err = io.WriteString(stdout, g.Dot())
	case "json":
		var data []byte
		if data, err = g.JSON(); err == nil {
			_, err = fmt.Fprintf(stdout, "%s\n", data)
		}
	default:
		return fmt.Errorf("--format %q: want mermaid, dot or json", *format)
	}
	return err
}

// checkGraph reports a cycle of g, and for every service the peers its
// code under root/services/<name>/ connects to (client.Connect with a
// literal name) that its contract does not declare, and those declared
// that no code connects to.
func checkGraph(g *depgraph.Graph, root string) error {
	var errs []error
	if c := g.Cycle(); c != nil {
		errs = append(errs, fmt.Errorf("dependency cycle: %s", strings.Join(c, " -> ")))
	}
	for _, s := range g.Services() {
		called, err := connectedPeers(filepath.Join(root, "services", s.Name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		contract := strings.Join(s.Contracts, ", ")
		for _, peer := range called {
			if !g.Declares(s.Name, peer.name) {
				errs = append(errs, fmt.Errorf("%s: service %s calls peer %q, which its contract %s does not declare in (keel.options.v1.service).depends_on", peer.at, s.Name, peer.name, contract))
			}
		}
		for _, d := range g.Deps(s.Name) {
			if !slices.ContainsFunc(called, func(c calledPeer) bool { return c.name == d }) {
				errs = append(errs, fmt.Errorf("service %s: its contract %s declares %s in depends_on, but no code under services/%s calls it (client.Connect)", s.Name, contract, d, s.Name))
			}
		}
	}
	return errors.Join(errs...)
}

// calledPeer is a peer a service's code connects to, and where.
type calledPeer struct {
	name string
	at   string // file:line
}

// connectedPeers finds the calls client.Connect(peers, "name", ...) in
// the Go files under dir, outside tests and generated ent code.
func connectedPeers(dir string) ([]calledPeer, error) {
	var found []calledPeer
	fset := token.NewFileSet()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return err
		case d.IsDir() && d.Name() == "ent":
			return filepath.SkipDir
		case d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go"):
			return nil
		}
		file, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		ast.Inspect(file, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) < 2 || !isClientConnect(call.Fun) {
				return true
			}
			if lit, ok := call.Args[1].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				if name, err := strconv.Unquote(lit.Value); err == nil {
					found = append(found, calledPeer{name: name, at: fset.Position(lit.Pos()).String()})
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the peers services/%s calls: %w", filepath.Base(dir), err)
	}
	return found, nil
}

// isClientConnect reports whether fun is client.Connect, possibly with
// explicit type arguments.
func isClientConnect(fun ast.Expr) bool {
	switch f := fun.(type) {
	case *ast.IndexExpr:
		fun = f.X
	case *ast.IndexListExpr:
		fun = f.X
	}
	sel, ok := fun.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "Connect" {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	return ok && pkg.Name == "client"
}
