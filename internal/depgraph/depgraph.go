// Package depgraph is the dependency graph of a Keel platform's services
// as their contracts declare it: each protobuf service lists the services
// it calls in (keel.options.v1.service).depends_on, and this package reads
// those lists from the compiled descriptors, maps each contract to the
// logical service that serves it, and answers what the platform needs of
// the graph: whether it has a cycle, the order to start services in
// (dependencies first), and pictures of it in Mermaid, Graphviz dot or
// JSON. `keel graph` prints and checks it; `keel up` starts services in
// its order; the runtime builds peer clients only for declared peers.
package depgraph

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	optionsv1 "github.com/keelplatform/keel/gen/go/keel/options/v1"
)

// Service is one logical service of the platform and the protobuf
// services (contracts) it serves.
type Service struct {
	// Name is the logical name, in discovery: "order".
	Name string
	// Contracts are the fully qualified protobuf services it serves:
	// "shop.order.v1.OrderService".
	Contracts []string
}

// Graph is the services of a platform and whom each depends on. Create
// it with [New]; it does not change after.
type Graph struct {
	services []Service
	// deps holds each service's dependencies by logical name, in the
	// order its contracts declare them, without repeats.
	deps map[string][]string
	// declared holds, for each service, the contract of each dependency
	// as declared (logical -> full name).
	declared map[string]map[string]string
}

// New reads the depends_on of every contract of services from the
// compiled descriptors in the global registry (generated code registers
// them when imported) and builds the graph. It fails when a contract is
// not registered, or a dependency names a contract none of services
// serves.
func New(services []Service) (*Graph, error) {
	servedBy := map[string]string{}
	for _, s := range services {
		for _, c := range s.Contracts {
			servedBy[c] = s.Name
		}
	}
	g := &Graph{services: services, deps: map[string][]string{}, declared: map[string]map[string]string{}}
	var errs []error
	for _, s := range services {
		g.declared[s.Name] = map[string]string{}
		for _, c := range s.Contracts {
			deps, err := DependsOn(c)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, d := range deps {
				peer, ok := servedBy[d]
				if !ok {
					errs = append(errs, fmt.Errorf("%s depends on %s, which no service of the platform serves", c, d))
					continue
				}
				if _, seen := g.declared[s.Name][peer]; !seen {
					g.deps[s.Name] = append(g.deps[s.Name], peer)
					g.declared[s.Name][peer] = d
				}
			}
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("depgraph: %w", errors.Join(errs...))
	}
	return g, nil
}

// DependsOn returns the services the protobuf service named fullName
// declares in (keel.options.v1.service).depends_on, as written.
func DependsOn(fullName string) ([]string, error) {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(fullName))
	if err != nil {
		return nil, fmt.Errorf("contract %s is not registered (is its generated package imported?): %w", fullName, err)
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a protobuf service", fullName)
	}
	rules, _ := proto.GetExtension(sd.Options(), optionsv1.E_Service).(*optionsv1.ServiceRules)
	return rules.GetDependsOn(), nil
}

// Services lists the graph's services, in the order given to [New].
func (g *Graph) Services() []Service { return slices.Clone(g.services) }

// Deps returns the logical names of the services name depends on.
func (g *Graph) Deps(name string) []string { return slices.Clone(g.deps[name]) }

// Declares reports whether service name declares peer among its
// dependencies.
func (g *Graph) Declares(name, peer string) bool {
	_, ok := g.declared[name][peer]
	return ok
}

// Cycle returns a dependency cycle as the path that closes it, its first
// service repeated at the end ("order", "inventory", "order"), or nil
// when the graph has none.
func (g *Graph) Cycle() []string {
	const (
		unseen = iota
		open
		done
	)
	state := map[string]int{}
	var path []string
	var visit func(string) []string
	visit = func(n string) []string {
		state[n] = open
		path = append(path, n)
		for _, d := range g.deps[n] {
			switch state[d] {
			case open:
				i := slices.Index(path, d)
				return append(slices.Clone(path[i:]), d)
			case unseen:
				if c := visit(d); c != nil {
					return c
				}
			}
		}
		path = path[:len(path)-1]
		state[n] = done
		return nil
	}
	for _, s := range g.services {
		if state[s.Name] == unseen {
			if c := visit(s.Name); c != nil {
				return c
			}
		}
	}
	return nil
}

// ErrCycle is wrapped by the error of [Graph.Order] on a graph with a
// cycle.
var ErrCycle = errors.New("dependency cycle")

// Order returns the services' logical names with every service after
// the services it depends on, otherwise in the order given to [New]:
// the order to start them in (and, reversed, to stop them).
func (g *Graph) Order() ([]string, error) {
	if c := g.Cycle(); c != nil {
		return nil, fmt.Errorf("%w: %s", ErrCycle, strings.Join(c, " -> "))
	}
	placed := map[string]bool{}
	var order []string
	var place func(string)
	place = func(n string) {
		if placed[n] {
			return
		}
		placed[n] = true
		for _, d := range g.deps[n] {
			place(d)
		}
		order = append(order, n)
	}
	for _, s := range g.services {
		place(s.Name)
	}
	return order, nil
}

// Mermaid draws the graph as a Mermaid flowchart, an arrow from each
// service to each service it calls.
func (g *Graph) Mermaid() string {
	var b strings.Builder
	b.WriteString("flowchart LR\n")
	for _, s := range g.services {
		if len(g.deps[s.Name]) == 0 {
			fmt.Fprintf(&b, "  %s\n", s.Name)
		}
		for _, d := range g.deps[s.Name] {
			fmt.Fprintf(&b, "  %s --> %s\n", s.Name, d)
		}
	}
	return b.String()
}

// Dot draws the graph in Graphviz's dot language.
func (g *Graph) Dot() string {
	var b strings.Builder
	b.WriteString("digraph keel {\n  rankdir=LR;\n")
	for _, s := range g.services {
		fmt.Fprintf(&b, "  %q;\n", s.Name)
		for _, d := range g.deps[s.Name] {
			fmt.Fprintf(&b, "  %q -> %q;\n", s.Name, d)
		}
	}
	b.WriteString("}\n")
	return b.String()
}

// JSON describes the graph as JSON: each service with its contracts and
// the logical names and contracts of its dependencies.
func (g *Graph) JSON() ([]byte, error) {
	type dep struct {
		Name     string `json:"name"`
		Contract string `json:"contract"`
	}
	type service struct {
		Name      string   `json:"name"`
		Contracts []string `json:"contracts"`
		DependsOn []dep    `json:"depends_on"`
	}
	out := struct {
		Services []service `json:"services"`
	}{}
	for _, s := range g.services {
		svc := service{Name: s.Name, Contracts: s.Contracts, DependsOn: []dep{}}
		for _, d := range g.deps[s.Name] {
			svc.DependsOn = append(svc.DependsOn, dep{Name: d, Contract: g.declared[s.Name][d]})
		}
		out.Services = append(out.Services, svc)
	}
	return json.MarshalIndent(out, "", "  ")
}

// FromDeps builds a graph from services and their dependencies given
// directly (logical name -> logical names), without reading contracts.
func FromDeps(services []Service, deps map[string][]string) (*Graph, error) {
	g := &Graph{services: services, deps: map[string][]string{}, declared: map[string]map[string]string{}}
	known := map[string]bool{}
	for _, s := range services {
		known[s.Name] = true
	}
	for _, s := range services {
		g.declared[s.Name] = map[string]string{}
		for _, d := range deps[s.Name] {
			if !known[d] {
				return nil, fmt.Errorf("depgraph: %s depends on %s, which is not one of the services", s.Name, d)
			}
			if _, seen := g.declared[s.Name][d]; !seen {
				g.deps[s.Name] = append(g.deps[s.Name], d)
				g.declared[s.Name][d] = d
			}
		}
	}
	return g, nil
}
