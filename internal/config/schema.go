package config

import (
	"encoding"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// nodeKind is what a key of the settings struct holds.
type nodeKind int

const (
	// section is a nested struct: its keys are its fields.
	section nodeKind = iota
	// leaf is a value decoded as a whole (scalar, list, anything yaml can
	// decode that is not a section or an entry map).
	leaf
	// entries is a map[string]V whose entries are leaves of their own.
	entries
)

// node is one key of a settings struct.
type node struct {
	path     string // e.g. "server/addr"; "" for the root
	index    []int  // field index from the root struct
	typ      reflect.Type
	kind     nodeKind
	static   bool
	children map[string]*node // sections only
	order    []string         // children in field order
}

// schema describes the keys of a settings struct type.
type schema struct {
	root *node
	// values lists leaf and entries nodes in field order.
	values []*node
}

var (
	yamlUnmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	timeType            = reflect.TypeFor[time.Time]()
)

// newSchema reads the keys of struct type t from its yaml and keel tags.
func newSchema(t reflect.Type) (*schema, error) {
	if t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("config: settings type %s is not a struct", t)
	}
	s := &schema{root: &node{typ: t, kind: section, children: map[string]*node{}}}
	if err := s.addFields(s.root, t, nil, false); err != nil {
		return nil, fmt.Errorf("config: settings type %s: %w", t, err)
	}
	envNames := map[string]string{}
	for _, n := range s.values {
		name := envName(n.path)
		if other, ok := envNames[name]; ok {
			return nil, fmt.Errorf("config: settings type %s: keys %s and %s share the environment variable %s", t, other, n.path, name)
		}
		envNames[name] = n.path
	}
	return s, nil
}

func (s *schema) addFields(sec *node, t reflect.Type, index []int, static bool) error {
	for i := range t.NumField() {
		f := t.Field(i)
		name, inline := yamlName(f)
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		idx := append(slices.Clone(index), i)
		st, err := isStatic(f)
		if err != nil {
			return err
		}
		st = st || static
		if f.Anonymous && (inline || name == "") {
			if f.Type.Kind() != reflect.Struct {
				return fmt.Errorf("embedded field %s: only structs can be inlined", f.Name)
			}
			if err := s.addFields(sec, f.Type, idx, st); err != nil {
				return err
			}
			continue
		}
		if !f.IsExported() {
			continue
		}
		if inline {
			return fmt.Errorf("field %s: only embedded structs can be inlined", f.Name)
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if strings.Contains(name, "/") {
			return fmt.Errorf("field %s: key %q contains '/'", f.Name, name)
		}
		if _, dup := sec.children[name]; dup {
			return fmt.Errorf("key %s is defined twice", joinPath(sec.path, name))
		}
		n := &node{path: joinPath(sec.path, name), index: idx, typ: f.Type, static: st}
		sec.children[name] = n
		sec.order = append(sec.order, name)
		switch {
		case isSection(f.Type):
			n.kind = section
			n.children = map[string]*node{}
			if err := s.addFields(n, f.Type, idx, st); err != nil {
				return err
			}
		case f.Type.Kind() == reflect.Map && f.Type.Key().Kind() == reflect.String:
			n.kind = entries
			s.values = append(s.values, n)
		default:
			n.kind = leaf
			s.values = append(s.values, n)
		}
	}
	return nil
}

// yamlName returns the key a field's yaml tag gives it ("" when the tag
// names none) and whether the tag says inline.
func yamlName(f reflect.StructField) (name string, inline bool) {
	tag := f.Tag.Get("yaml")
	name, opts, _ := strings.Cut(tag, ",")
	for _, o := range strings.Split(opts, ",") {
		if o == "inline" {
			inline = true
		}
	}
	return name, inline
}

// isStatic reads the keel tag: keel:"static" marks a field (and everything
// below it) as needing a restart to change.
func isStatic(f reflect.StructField) (bool, error) {
	tag, ok := f.Tag.Lookup("keel")
	if !ok {
		return false, nil
	}
	static := false
	for _, o := range strings.Split(tag, ",") {
		switch o {
		case "static":
			static = true
		case "":
		default:
			return false, fmt.Errorf("field %s: unknown keel tag option %q (want static)", f.Name, o)
		}
	}
	return static, nil
}

// isSection reports whether a struct-typed field holds keys of its own
// rather than a value decoded as a whole.
func isSection(t reflect.Type) bool {
	if t.Kind() != reflect.Struct || t == timeType {
		return false
	}
	p := reflect.PointerTo(t)
	return !p.Implements(yamlUnmarshalerType) && !p.Implements(textUnmarshalerType)
}

// find returns the node a key names: a node and "" for a section or leaf,
// or an entries node and the entry's name. It returns nil for an unknown
// key.
func (s *schema) find(key string) (*node, string) {
	n := s.root
	segs := strings.Split(key, "/")
	for i, seg := range segs {
		switch n.kind {
		case section:
			child := n.children[seg]
			if child == nil {
				return nil, ""
			}
			n = child
		case entries:
			if i != len(segs)-1 || seg == "" {
				return nil, ""
			}
			return n, seg
		case leaf:
			return nil, ""
		}
	}
	return n, ""
}

func joinPath(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "/" + name
}

// envName is the environment variable for a key path: KEEL_ followed by the
// path upper-cased, '/' replaced by '_'.
func envName(path string) string {
	return "KEEL_" + strings.ToUpper(strings.ReplaceAll(path, "/", "_"))
}
