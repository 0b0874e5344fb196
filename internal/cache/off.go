package cache

import "context"

// offStore is the store of a cache that is turned off (Config.Enabled
// false): it keeps nothing, so every read goes to the loader, and its
// filters are never built, so they let every id through.
type offStore struct{}

func (offStore) lookup(context.Context, string) (entry, status) { return entry{}, miss }

func (offStore) fill(ctx context.Context, _ string, _ bool, load func(context.Context) entry) entry {
	return load(ctx)
}

func (offStore) invalidate(context.Context, []string) error { return nil }

func (offStore) bits(string, geometry) filterBits { return offBits{} }

func (offStore) breakerState() float64 { return 0 }

func (offStore) close() {}

// offBits are the bits of a filter of a cache that is off: never built.
type offBits struct{}

func (offBits) add(context.Context, []uint64) error { return nil }

func (offBits) test(context.Context, []uint64) (bool, error) { return true, nil }

// rebuild does not read the ids: a filter that lets every id through
// needs none.
func (offBits) rebuild(context.Context, func(set func(uint64)) error) error { return nil }
