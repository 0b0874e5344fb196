package config

import (
	"context"
	"maps"
	"sync"
)

// Snapshot is the content of a [Source] at one version.
type Snapshot struct {
	// Version identifies the content; it changes whenever the content may
	// have changed (a Consul index). It is never 0.
	Version uint64
	// Pairs holds the keys below the service's prefix, relative to it
	// (e.g. "server/addr"), with their raw values.
	Pairs map[string][]byte
}

// Source is a layer of keys that can change while the process runs:
// Consul KV in production (package consul), [MemorySource] in tests. A
// Source serves one service's prefix and one [Watcher]; it need not be safe
// for concurrent use.
type Source interface {
	// Next returns the content once its version differs from after,
	// waiting until it does or ctx is done. With after 0 it returns the
	// current content at once. When the source cannot be read it returns an
	// error; the caller keeps its last content and calls Next again, and it
	// is Next's job to wait (back off) before asking the backend again.
	Next(ctx context.Context, after uint64) (Snapshot, error)
	// String describes where keys live such that appending a key names
	// it, e.g. "consul:keel/local/user/".
	String() string
}

// MemorySource is a [Source] held in memory, for tests of code that reads
// configuration. The zero value is not usable: create one with
// [NewMemorySource]. It is safe for concurrent use.
type MemorySource struct {
	mu      sync.Mutex
	version uint64
	pairs   map[string][]byte
	changed chan struct{} // closed and replaced on every change
}

// NewMemorySource returns a MemorySource holding pairs (keys relative to
// the service's prefix) at version 1.
func NewMemorySource(pairs map[string]string) *MemorySource {
	m := &MemorySource{version: 1, pairs: map[string][]byte{}, changed: make(chan struct{})}
	for k, v := range pairs {
		m.pairs[k] = []byte(v)
	}
	return m
}

// Set stores value under key and bumps the version.
func (m *MemorySource) Set(key, value string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pairs[key] = []byte(value)
	m.bump()
}

// SetAll stores every pair in one version, as a KV transaction would.
func (m *MemorySource) SetAll(pairs map[string]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range pairs {
		m.pairs[k] = []byte(v)
	}
	m.bump()
}

// Delete removes key and bumps the version.
func (m *MemorySource) Delete(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.pairs, key)
	m.bump()
}

func (m *MemorySource) bump() {
	m.version++
	close(m.changed)
	m.changed = make(chan struct{})
}

// Next implements [Source]. It never fails.
func (m *MemorySource) Next(ctx context.Context, after uint64) (Snapshot, error) {
	for {
		m.mu.Lock()
		if m.version != after {
			snap := Snapshot{Version: m.version, Pairs: maps.Clone(m.pairs)}
			m.mu.Unlock()
			return snap, nil
		}
		changed := m.changed
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return Snapshot{}, ctx.Err()
		case <-changed:
		}
	}
}

// String implements [Source].
func (m *MemorySource) String() string { return "memory:" }
