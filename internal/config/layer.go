package config

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// setting is one value a layer gives one key.
type setting struct {
	target *node
	entry  string // the map entry, for an entries node
	value  *yaml.Node
	origin string
}

// layer holds the settings of one layer by key path. Layers are merged by
// key, later ones winning.
type layer map[string]setting

// errNoValue is wrapped for a key present without a value (YAML null).
var errNoValue = errors.New("no value (null)")

// set records value for the key n (plus entry, for a map entry), walking
// into sections and map entries. Every problem found is appended to errs.
func (l layer) set(n *node, entry string, value *yaml.Node, origin string, errs *[]error) {
	key := n.path
	if entry != "" {
		key = joinPath(n.path, entry)
	}
	value = resolveAlias(value)
	if value.Kind == yaml.ScalarNode && value.ShortTag() == "!!null" {
		*errs = append(*errs, &KeyError{Key: key, Origin: origin, Err: errNoValue})
		return
	}
	switch {
	case entry != "" || n.kind == leaf:
		l[key] = setting{target: n, entry: entry, value: value, origin: origin}
	case n.kind == section || n.kind == entries:
		if value.Kind != yaml.MappingNode {
			*errs = append(*errs, &KeyError{Key: key, Origin: origin, Err: fmt.Errorf("want a mapping of keys, got %s", describe(value))})
			return
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(value.Content); i += 2 {
			k, v := resolveAlias(value.Content[i]), value.Content[i+1]
			childOrigin := lineOrigin(origin, v)
			if k.Kind != yaml.ScalarNode || k.Value == "" {
				*errs = append(*errs, &KeyError{Key: key, Origin: childOrigin, Err: fmt.Errorf("want a name as key, got %s", describe(k))})
				continue
			}
			childKey := joinPath(key, k.Value)
			if seen[k.Value] {
				*errs = append(*errs, &KeyError{Key: childKey, Origin: childOrigin, Err: errors.New("key given twice")})
				continue
			}
			seen[k.Value] = true
			if n.kind == entries {
				if strings.Contains(k.Value, "/") {
					*errs = append(*errs, &KeyError{Key: childKey, Origin: childOrigin, Err: errors.New("an entry name cannot contain '/'")})
					continue
				}
				l.set(n, k.Value, v, childOrigin, errs)
				continue
			}
			child := n.children[k.Value]
			if child == nil {
				*errs = append(*errs, &KeyError{Key: childKey, Origin: childOrigin, Err: ErrUnknownKey})
				continue
			}
			l.set(child, "", v, childOrigin, errs)
		}
	}
}

// lineOrigin appends the line of v to a file origin ("dir/user.yaml" becomes
// "dir/user.yaml:7"); other origins are left alone.
func lineOrigin(origin string, v *yaml.Node) string {
	if v.Line == 0 || !strings.HasSuffix(origin, ".yaml") {
		return origin
	}
	return fmt.Sprintf("%s:%d", origin, v.Line)
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%s %q", n.ShortTag(), n.Value)
	default:
		return "nothing"
	}
}

// parseYAML parses one YAML document. It returns nil for an empty one.
func parseYAML(data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil
	}
	return doc.Content[0], nil
}

// fileLayer reads the settings in a YAML file's bytes; name is the file's
// name for errors.
func (s *schema) fileLayer(name string, data []byte) (layer, error) {
	l := layer{}
	root, err := parseYAML(data)
	if err != nil {
		return nil, fmt.Errorf("config: parse %s: %w", name, err)
	}
	if root == nil {
		return l, nil
	}
	var errs []error
	l.set(s.root, "", root, name, &errs)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("config: %s: %w", name, err)
	}
	return l, nil
}

// readFileLayer reads <dir>/<env>/<service>.yaml. An empty dir means no
// file layer.
func (s *schema) readFileLayer(dir string, env Env, service string) (layer, error) {
	if dir == "" {
		return layer{}, nil
	}
	name := filepath.Join(dir, string(env), service+".yaml")
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("config: read %s: %w", name, err)
	}
	return s.fileLayer(name, data)
}

// kvLayer reads the settings in a Source snapshot. Keys ending in '/'
// (folders) and empty values (unset keys) are skipped. An entry of a map
// of structs may be one key holding the whole entry
// (rate_limits/groups/login: {rate: 5, ...}) or one key per field
// (rate_limits/groups/login/rate: 5), as a pushed seed file writes it,
// but not both.
func (s *schema) kvLayer(src Source, pairs map[string][]byte) (layer, error) {
	l := layer{}
	var errs []error
	// fields gathers the per-field keys of entries, by entry key.
	type gathered struct {
		n      *node
		entry  string
		value  *yaml.Node
		origin string
	}
	fields := map[string]*gathered{}
	for _, key := range slices.Sorted(maps.Keys(pairs)) {
		data := pairs[key]
		if key == "" || strings.HasSuffix(key, "/") || len(strings.TrimSpace(string(data))) == 0 {
			continue
		}
		origin := src.String() + key
		n, entry := s.find(key)
		var rest []string
		if n == nil {
			n, entry, rest = s.findEntryField(key)
		}
		if n == nil {
			errs = append(errs, &KeyError{Key: key, Origin: origin, Err: ErrUnknownKey})
			continue
		}
		value, err := parseYAML(data)
		if err != nil {
			errs = append(errs, &KeyError{Key: key, Origin: origin, Err: fmt.Errorf("parse value: %w", err)})
			continue
		}
		if value == nil {
			continue
		}
		if rest == nil {
			l.set(n, entry, value, origin, &errs)
			continue
		}
		entryKey := joinPath(n.path, entry)
		g := fields[entryKey]
		if g == nil {
			g = &gathered{n: n, entry: entry, value: &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}, origin: src.String() + entryKey + "/"}
			fields[entryKey] = g
		}
		if err := setPath(g.value, rest, value); err != nil {
			errs = append(errs, &KeyError{Key: key, Origin: origin, Err: err})
		}
	}
	for _, entryKey := range slices.Sorted(maps.Keys(fields)) {
		g := fields[entryKey]
		if _, whole := l[entryKey]; whole {
			errs = append(errs, &KeyError{Key: entryKey, Origin: g.origin, Err: errors.New("given both as one key and key by key: keep one")})
			continue
		}
		l.set(g.n, g.entry, g.value, g.origin, &errs)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return l, nil
}

// findEntryField finds a key below an entry of a map whose values are
// structs ("rate_limits/groups/login/rate"): the map's node, the entry,
// and the path below it. It returns a nil node for any other key.
func (s *schema) findEntryField(key string) (*node, string, []string) {
	segs := strings.Split(key, "/")
	n := s.root
	for i, seg := range segs {
		switch n.kind {
		case section:
			child := n.children[seg]
			if child == nil {
				return nil, "", nil
			}
			n = child
		case entries:
			if elem := n.typ.Elem(); i+1 >= len(segs) || seg == "" || elem.Kind() != reflect.Struct || elem == timeType {
				return nil, "", nil
			}
			if i+2 != len(segs) || !hasField(n.typ.Elem(), segs[i+1]) {
				return nil, "", nil // one level of fields, by their yaml names
			}
			return n, seg, segs[i+1:]
		default:
			return nil, "", nil
		}
	}
	return nil, "", nil
}

// hasField reports whether struct type t has a field whose key is name.
func hasField(t reflect.Type, name string) bool {
	for i := range t.NumField() {
		f := t.Field(i)
		key, _ := yamlName(f)
		if key == "" {
			key = strings.ToLower(f.Name)
		}
		if f.IsExported() && key == name {
			return true
		}
	}
	return false
}

// setPath sets value at path in the mapping m, making the mappings on
// the way.
func setPath(m *yaml.Node, path []string, value *yaml.Node) error {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value != path[0] {
			continue
		}
		if len(path) == 1 {
			return errors.New("given twice")
		}
		if m.Content[i+1].Kind != yaml.MappingNode {
			return fmt.Errorf("%s holds a value, not keys", path[0])
		}
		return setPath(m.Content[i+1], path[1:], value)
	}
	k := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: path[0]}
	if len(path) == 1 {
		m.Content = append(m.Content, k, value)
		return nil
	}
	child := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	m.Content = append(m.Content, k, child)
	return setPath(child, path[1:], value)
}

// envLayer reads the KEEL_<PATH> variables of every key through lookup.
// Empty variables count as unset.
func (s *schema) envLayer(lookup func(string) (string, bool)) (layer, error) {
	l := layer{}
	var errs []error
	for _, n := range s.values {
		name := envName(n.path)
		raw, ok := lookup(name)
		if !ok || raw == "" {
			continue
		}
		origin := "env " + name
		var value *yaml.Node
		if n.kind == leaf && n.typ.Kind() == reflect.String {
			value = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: raw}
		} else {
			v, err := parseYAML([]byte(raw))
			if err != nil {
				errs = append(errs, &KeyError{Key: n.path, Origin: origin, Err: fmt.Errorf("parse value: %w", err)})
				continue
			}
			if v == nil {
				continue
			}
			value = v
		}
		l.set(n, "", value, origin, &errs)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("config: environment: %w", err)
	}
	return l, nil
}

// merge returns the settings of layers, later layers winning key by key.
func merge(layers ...layer) layer {
	out := layer{}
	for _, l := range layers {
		maps.Copy(out, l)
	}
	return out
}

// decode applies settings to a copy of defaults. It reports every key that
// does not decode.
func decode[T any](defaults T, settings layer) (T, error) {
	out := defaults
	rv := reflect.ValueOf(&out).Elem()
	cloned := map[*node]bool{}
	var errs []error
	for _, key := range slices.Sorted(maps.Keys(settings)) {
		st := settings[key]
		f := rv.FieldByIndex(st.target.index)
		if st.entry != "" {
			if !cloned[st.target] {
				m := reflect.MakeMap(f.Type())
				for it := f.MapRange(); it.Next(); {
					m.SetMapIndex(it.Key(), it.Value())
				}
				f.Set(m)
				cloned[st.target] = true
			}
			v := reflect.New(f.Type().Elem())
			if err := decodeValue(st.value, v); err != nil {
				errs = append(errs, &KeyError{Key: key, Origin: st.origin, Err: err})
				continue
			}
			f.SetMapIndex(reflect.ValueOf(st.entry).Convert(f.Type().Key()), v.Elem())
			continue
		}
		v := reflect.New(f.Type())
		if err := decodeValue(st.value, v); err != nil {
			errs = append(errs, &KeyError{Key: key, Origin: st.origin, Err: err})
			continue
		}
		f.Set(v.Elem())
	}
	if err := errors.Join(errs...); err != nil {
		var zero T
		return zero, err
	}
	return out, nil
}

// decodeValue decodes one YAML value into the fresh value ptr points to.
// Unlike yaml alone it refuses to truncate a float into an integer.
func decodeValue(value *yaml.Node, ptr reflect.Value) error {
	switch ptr.Elem().Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if value.Kind == yaml.ScalarNode && value.ShortTag() == "!!float" {
			return fmt.Errorf("want an integer, got %q", value.Value)
		}
	}
	if err := value.Decode(ptr.Interface()); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			return errors.New(strings.Join(te.Errors, "; "))
		}
		return err
	}
	return nil
}

// validate calls v's Validate method, if its type has one. KeyErrors it
// returns without an origin get the origin of the key's setting.
func validate[T any](v T, settings layer) error {
	val, ok := any(&v).(interface{ Validate() error })
	if !ok {
		return nil
	}
	err := val.Validate()
	if err == nil {
		return nil
	}
	fillOrigins(err, settings)
	return err
}

func fillOrigins(err error, settings layer) {
	if ke, ok := err.(*KeyError); ok {
		if ke.Origin == "" {
			ke.Origin = "default"
			if st, ok := settings[ke.Key]; ok {
				ke.Origin = st.origin
			}
		}
		return
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			fillOrigins(e, settings)
		}
	case interface{ Unwrap() error }:
		fillOrigins(u.Unwrap(), settings)
	}
}
