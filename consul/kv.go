package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"go.yaml.in/yaml/v3"

	"github.com/keelplatform/keel/internal/config"
)

// KVSourceConfig tunes a [KVSource]. The zero value of each field means its
// documented default.
type KVSourceConfig struct {
	// WaitTime is how long one blocking query may wait for a change before
	// Consul answers anyway. Default 5m. A query with no answer 5s after
	// WaitTime (plus the up to WaitTime/16 Consul adds; 5s flat for a
	// query that does not block) is abandoned as stalled, as on a
	// half-open connection: [KVSource.Next] returns an error, as when
	// Consul is unreachable, and the next call asks again.
	WaitTime time.Duration
	// MaxBackoff caps the exponential backoff, from 100ms, between queries
	// while Consul is unreachable or failing. Default 2s, so a returning
	// agent is seen within about 2s.
	MaxBackoff time.Duration
}

const kvMinBackoff = 100 * time.Millisecond

func (c KVSourceConfig) withDefaults() KVSourceConfig {
	if c.WaitTime <= 0 {
		c.WaitTime = 5 * time.Minute
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 2 * time.Second
	}
	return c
}

// KVSource is a [config.Source] over one service's keys in Consul KV,
// keel/<env>/<service>/. It watches them with blocking queries, so a
// change reaches the [config.Watcher] as soon as Consul commits it. While
// Consul is unreachable, [KVSource.Next] returns errors, waiting with
// exponential backoff before each retry, and the watcher keeps the last
// good configuration. A KVSource serves one watcher: it is not safe for
// concurrent use.
type KVSource struct {
	client   *api.Client
	prefix   string
	cfg      KVSourceConfig
	failures int
}

var _ config.Source = (*KVSource)(nil)

// NewKVSource returns a source for the keys under keel/<env>/<service>/.
func NewKVSource(client *api.Client, env config.Env, service string, cfg KVSourceConfig) *KVSource {
	return &KVSource{client: client, prefix: config.KVPrefix(env, service), cfg: cfg.withDefaults()}
}

// String names the prefix watched, e.g. "consul:keel/local/user/".
func (s *KVSource) String() string { return "consul:" + s.prefix }

// Next implements [config.Source]. After a failed call it first waits out
// the backoff, then asks without blocking: the agent may have restarted
// with a fresh index, which a blocking query on the old one would not
// notice until WaitTime passed.
func (s *KVSource) Next(ctx context.Context, after uint64) (config.Snapshot, error) {
	wait := after
	if s.failures > 0 {
		backoff := min(kvMinBackoff<<min(s.failures-1, 16), s.cfg.MaxBackoff)
		// Up to 20% less, so that many processes do not retry in step.
		backoff -= time.Duration(rand.Int64N(int64(backoff)/5 + 1))
		select {
		case <-ctx.Done():
			return config.Snapshot{}, ctx.Err()
		case <-time.After(backoff):
		}
		wait = 0
	}
	for {
		pairs, meta, err := s.list(ctx, wait)
		if err != nil {
			if ctx.Err() != nil {
				return config.Snapshot{}, ctx.Err()
			}
			s.failures++
			return config.Snapshot{}, err
		}
		s.failures = 0
		// Consul's rules for blocking queries: an index of 0 is never
		// valid, and one that went backwards (a restarted or replaced
		// agent) is a new start.
		index := max(meta.LastIndex, 1)
		if after == 0 || index != after {
			snap := config.Snapshot{Version: index, Pairs: make(map[string][]byte, len(pairs))}
			for _, p := range pairs {
				snap.Pairs[strings.TrimPrefix(p.Key, s.prefix)] = p.Value
			}
			return snap, nil
		}
		wait = index // WaitTime passed without a change
	}
}

// list runs one (blocking, unless index is 0) query for the keys under
// the prefix. Like the resolver's, it is bounded a little beyond the
// blocking wait (see queryTimeout): a connection that went silent (a half-open one, to a
// host that vanished without a reset) would otherwise hold it, and with
// it every reload, forever.
func (s *KVSource) list(ctx context.Context, index uint64) (api.KVPairs, *api.QueryMeta, error) {
	bound := queryTimeout(index, s.cfg.WaitTime)
	queryCtx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	q := (&api.QueryOptions{WaitIndex: index, WaitTime: s.cfg.WaitTime}).WithContext(queryCtx)
	pairs, meta, err := s.client.KV().List(s.prefix, q)
	switch {
	case err == nil:
		return pairs, meta, nil
	case ctx.Err() == nil && errors.Is(queryCtx.Err(), context.DeadlineExceeded):
		return nil, nil, fmt.Errorf("consul: list %s: no answer within %v; query abandoned as stalled: %w", s.prefix, bound, err)
	default:
		return nil, nil, fmt.Errorf("consul: list %s: %w", s.prefix, err)
	}
}

// ChangeKind says how a key differs between the seed files and Consul KV.
type ChangeKind int

// The ways a key can differ.
const (
	// OnlyInFile is a key a file has and KV lacks.
	OnlyInFile ChangeKind = iota + 1
	// OnlyInKV is a key KV has and no file has.
	OnlyInKV
	// Changed is a key both have with different values.
	Changed
)

// String returns a short name of the kind.
func (k ChangeKind) String() string {
	switch k {
	case OnlyInFile:
		return "only in file"
	case OnlyInKV:
		return "only in KV"
	case Changed:
		return "changed"
	default:
		return fmt.Sprintf("ChangeKind(%d)", int(k))
	}
}

// Change is one key that differs between the seed files and Consul KV.
type Change struct {
	// Key is the full KV key, e.g. "keel/local/user/log_level".
	Key string
	// Kind says how it differs.
	Kind ChangeKind
	// File is the value the files give the key, as it would be written to
	// KV; empty for OnlyInKV.
	File string
	// KV is the value in Consul; empty for OnlyInFile.
	KV string
}

// seed is the files of one environment, flattened to KV keys.
type seed struct {
	env      config.Env
	dir      string
	services []string                     // sorted
	data     map[string][]byte            // file content by service
	keys     map[string]map[string]string // service -> key below its prefix -> value
}

// PushOption changes what [Push] checks.
type PushOption func(*pushOptions)

type pushOptions struct {
	validators map[string]func(data []byte) error
}

// WithValidator makes [Push] check the file of service with validate
// before writing anything, e.g. with [config.CheckFile] and the service's
// settings type, so that unknown keys and bad values never reach KV.
func WithValidator(service string, validate func(data []byte) error) PushOption {
	return func(o *pushOptions) { o.validators[service] = validate }
}

// Push makes Consul KV under keel/<env>/ mirror the seed files
// <dir>/<env>/<service>.yaml: keys the files have are written, keys they
// lack are deleted, including those of services without a file. It first
// reads and checks every file (YAML that parses, a mapping at the top,
// keys without '/', every leaf a scalar or a list, plus any validators
// given) and writes nothing if one fails, or if there is no file at all.
// Each service's changes are written in one KV transaction, so watchers see
// all of them at once. It returns the changes it made.
func Push(ctx context.Context, client *api.Client, env config.Env, dir string, opts ...PushOption) ([]Change, error) {
	o := pushOptions{validators: map[string]func([]byte) error{}}
	for _, opt := range opts {
		opt(&o)
	}
	s, err := readSeed(env, dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, svc := range s.services {
		if validate := o.validators[svc]; validate != nil {
			if err := validate(s.data[svc]); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", s.file(svc), err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("consul: push %s: nothing written: %w", env, err)
	}
	changes, err := diff(ctx, client, s)
	if err != nil {
		return nil, err
	}
	// One transaction per service, in key order.
	byService := map[string]api.TxnOps{}
	var order []string
	for _, c := range changes {
		svc, _, _ := strings.Cut(strings.TrimPrefix(c.Key, envPrefix(env)), "/")
		if _, ok := byService[svc]; !ok {
			order = append(order, svc)
		}
		op := &api.KVTxnOp{Verb: api.KVSet, Key: c.Key, Value: []byte(c.File)}
		if c.Kind == OnlyInKV {
			op = &api.KVTxnOp{Verb: api.KVDelete, Key: c.Key}
		}
		byService[svc] = append(byService[svc], &api.TxnOp{KV: op})
	}
	for _, svc := range order {
		if err := writeTxn(ctx, client, byService[svc]); err != nil {
			return nil, fmt.Errorf("consul: push %s service %s: %w", env, svc, err)
		}
	}
	return changes, nil
}

// maxTxnOps is the most operations Consul accepts in one transaction.
const maxTxnOps = 64

// writeTxn applies ops in transactions of at most maxTxnOps operations:
// atomically when there are no more.
func writeTxn(ctx context.Context, client *api.Client, ops api.TxnOps) error {
	for chunk := range slices.Chunk(ops, maxTxnOps) {
		ok, resp, _, err := client.Txn().Txn(chunk, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return fmt.Errorf("kv transaction: %w", err)
		}
		if !ok {
			var msgs []string
			for _, e := range resp.Errors {
				msgs = append(msgs, fmt.Sprintf("operation %d: %s", e.OpIndex, e.What))
			}
			return fmt.Errorf("kv transaction rolled back: %s", strings.Join(msgs, "; "))
		}
	}
	return nil
}

// Diff returns how Consul KV under keel/<env>/ differs from the seed files
// <dir>/<env>/<service>.yaml, in key order; nil when it mirrors them.
// Values are compared as YAML, so "info" and info are equal.
func Diff(ctx context.Context, client *api.Client, env config.Env, dir string) ([]Change, error) {
	s, err := readSeed(env, dir)
	if err != nil {
		return nil, err
	}
	return diff(ctx, client, s)
}

func diff(ctx context.Context, client *api.Client, s *seed) ([]Change, error) {
	prefix := envPrefix(s.env)
	pairs, _, err := client.KV().List(prefix, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul: list %s: %w", prefix, err)
	}
	inKV := map[string]string{}
	for _, p := range pairs {
		if strings.HasSuffix(p.Key, "/") && len(p.Value) == 0 {
			continue // a folder
		}
		inKV[p.Key] = string(p.Value)
	}
	inFiles := map[string]string{}
	for _, svc := range s.services {
		for k, v := range s.keys[svc] {
			inFiles[config.KVPrefix(s.env, svc)+k] = v
		}
	}
	var changes []Change
	for _, key := range slices.Sorted(maps.Keys(inFiles)) {
		file := inFiles[key]
		kv, ok := inKV[key]
		switch {
		case !ok:
			changes = append(changes, Change{Key: key, Kind: OnlyInFile, File: file})
		case !sameValue(file, kv):
			changes = append(changes, Change{Key: key, Kind: Changed, File: file, KV: kv})
		}
	}
	for _, key := range slices.Sorted(maps.Keys(inKV)) {
		if _, ok := inFiles[key]; !ok {
			changes = append(changes, Change{Key: key, Kind: OnlyInKV, KV: inKV[key]})
		}
	}
	slices.SortStableFunc(changes, func(a, b Change) int { return strings.Compare(a.Key, b.Key) })
	return changes, nil
}

// sameValue compares two KV values as YAML, falling back to text.
func sameValue(a, b string) bool {
	if a == b {
		return true
	}
	var va, vb any
	if yaml.Unmarshal([]byte(a), &va) != nil || yaml.Unmarshal([]byte(b), &vb) != nil {
		return false
	}
	return va != nil && reflect.DeepEqual(va, vb)
}

func envPrefix(env config.Env) string { return "keel/" + string(env) + "/" }

func (s *seed) file(service string) string {
	return filepath.Join(s.dir, string(s.env), service+".yaml")
}

// readSeed reads and checks every <dir>/<env>/*.yaml file.
func readSeed(env config.Env, dir string) (*seed, error) {
	if _, err := config.ParseEnv(string(env)); err != nil || env == "" {
		return nil, fmt.Errorf("consul: environment %q: want local, test or prod", env)
	}
	s := &seed{env: env, dir: dir, data: map[string][]byte{}, keys: map[string]map[string]string{}}
	envDir := filepath.Join(dir, string(env))
	entries, err := os.ReadDir(envDir)
	if err != nil {
		return nil, fmt.Errorf("consul: read seed files: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".yaml") {
			if strings.HasSuffix(name, ".yml") {
				errs = append(errs, fmt.Errorf("%s: name seed files *.yaml", filepath.Join(envDir, name)))
			}
			continue
		}
		svc := strings.TrimSuffix(name, ".yaml")
		path := filepath.Join(envDir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", path, err))
			continue
		}
		keys, err := flattenFile(data)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			continue
		}
		s.services = append(s.services, svc)
		s.data[svc], s.keys[svc] = data, keys
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("consul: seed files of %s: %w", env, err)
	}
	if len(s.services) == 0 {
		return nil, fmt.Errorf("consul: no seed files (*.yaml) in %s", envDir)
	}
	slices.Sort(s.services)
	return s, nil
}

// flattenFile turns a seed file into KV keys (leaf paths joined with '/')
// and values: scalars as YAML, lists as JSON.
func flattenFile(data []byte) (map[string]string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	keys := map[string]string{}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return keys, nil
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("line %d: want a mapping of keys at the top", root.Line)
	}
	var errs []error
	flatten("", root, keys, &errs)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return keys, nil
}

func flatten(path string, n *yaml.Node, out map[string]string, errs *[]error) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.MappingNode:
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			key := k.Value
			switch {
			case k.Kind != yaml.ScalarNode || key == "":
				*errs = append(*errs, fmt.Errorf("line %d: want a name as key below %q", k.Line, path))
				continue
			case strings.Contains(key, "/"):
				*errs = append(*errs, fmt.Errorf("line %d: key %q contains '/'", k.Line, key))
				continue
			case seen[key]:
				*errs = append(*errs, fmt.Errorf("line %d: key %q given twice", k.Line, joinKey(path, key)))
				continue
			}
			seen[key] = true
			flatten(joinKey(path, key), n.Content[i+1], out, errs)
		}
	case yaml.SequenceNode:
		var v any
		if err := n.Decode(&v); err != nil {
			*errs = append(*errs, fmt.Errorf("line %d: key %s: %w", n.Line, path, err))
			return
		}
		var b strings.Builder
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			*errs = append(*errs, fmt.Errorf("line %d: key %s: a list KV can hold as JSON: %w", n.Line, path, err))
			return
		}
		out[path] = strings.TrimSuffix(b.String(), "\n")
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			*errs = append(*errs, fmt.Errorf("line %d: key %s has no value", n.Line, path))
			return
		}
		if n.Style == 0 {
			out[path] = n.Value // plain: reads back the same
			return
		}
		b, err := yaml.Marshal(&yaml.Node{Kind: yaml.ScalarNode, Tag: n.Tag, Value: n.Value, Style: n.Style})
		if err != nil {
			*errs = append(*errs, fmt.Errorf("line %d: key %s: %w", n.Line, path, err))
			return
		}
		out[path] = strings.TrimSuffix(string(b), "\n")
	default:
		*errs = append(*errs, fmt.Errorf("line %d: key %s: want a scalar, a list or a mapping", n.Line, path))
	}
}

func joinKey(path, key string) string {
	if path == "" {
		return key
	}
	return path + "/" + key
}
