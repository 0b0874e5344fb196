package saga

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"sync"
	"time"
)

// MemStore is a [Store] in memory, for tests and examples. The zero value
// is ready to use; set its fields before its first use. It is safe for
// concurrent use.
type MemStore struct {
	// Now is the store's clock, which alone decides lease expiry; tests
	// set a fake one to expire leases at will. Default: time.Now.
	Now func() time.Time
	// Apply, if set, is called inside every write (Create, Save) with
	// the record about to be stored and what the write records, while
	// the store is locked: an error aborts the write, which returns it.
	// It stands for the caller's own tables, updated in the same
	// transaction as the saga row. It must not call the store.
	Apply func(rec Record, ev Event) error

	mu   sync.Mutex
	rows map[string]Record
}

var _ Store = (*MemStore)(nil)

func (m *MemStore) now() time.Time {
	if m.Now != nil {
		return m.Now()
	}
	return time.Now()
}

// apply calls Apply, if set.
func (m *MemStore) apply(rec Record, ev Event) error {
	if m.Apply == nil {
		return nil
	}
	if err := m.Apply(clone(rec), ev); err != nil {
		return fmt.Errorf("saga: memstore: %s of %s: %w", ev.Kind, rec.ID, err)
	}
	return nil
}

// clone returns rec with its own copy of the state.
func clone(rec Record) Record {
	rec.State = bytes.Clone(rec.State)
	return rec
}

// Create implements [Store.Create].
func (m *MemStore) Create(_ context.Context, rec Record, ttl time.Duration) (Record, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.rows[rec.ID]; ok {
		return clone(old), false, nil
	}
	now := m.now()
	rec = clone(rec)
	rec.LeaseExpiry = now.Add(ttl)
	rec.Version = 1
	rec.CreatedAt, rec.UpdatedAt = now, now
	if err := m.apply(rec, Event{Kind: Created, Step: -1}); err != nil {
		return Record{}, false, err
	}
	if m.rows == nil {
		m.rows = map[string]Record{}
	}
	m.rows[rec.ID] = rec
	return clone(rec), true, nil
}

// Get implements [Store.Get].
func (m *MemStore) Get(_ context.Context, id string) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.rows[id]
	if !ok {
		return Record{}, fmt.Errorf("saga: memstore: %s: %w", id, ErrNotFound)
	}
	return clone(rec), nil
}

// Unfinished implements [Store.Unfinished]. It returns the sagas oldest
// first, those created at the same time by id, so that resumes go in one
// order from run to run.
func (m *MemStore) Unfinished(_ context.Context, definition string) ([]Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var recs []Record
	for _, rec := range m.rows {
		if rec.Definition == definition && !rec.Status.Finished() {
			recs = append(recs, clone(rec))
		}
	}
	sort.Slice(recs, func(i, j int) bool {
		if !recs[i].CreatedAt.Equal(recs[j].CreatedAt) {
			return recs[i].CreatedAt.Before(recs[j].CreatedAt)
		}
		return recs[i].ID < recs[j].ID
	})
	return recs, nil
}

// Acquire implements [Store.Acquire].
func (m *MemStore) Acquire(_ context.Context, id, owner string, ttl time.Duration) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.rows[id]
	now := m.now()
	if !ok || rec.Status.Finished() || (rec.LeaseOwner != "" && rec.LeaseExpiry.After(now)) {
		return Record{}, fmt.Errorf("saga: memstore: %s: %w", id, ErrNotAcquired)
	}
	rec.LeaseOwner, rec.LeaseExpiry = owner, now.Add(ttl)
	rec.Version++
	m.rows[id] = rec
	return clone(rec), nil
}

// Renew implements [Store.Renew].
func (m *MemStore) Renew(_ context.Context, id, owner string, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.rows[id]
	now := m.now()
	if !ok || owner == "" || rec.LeaseOwner != owner || !rec.LeaseExpiry.After(now) {
		return fmt.Errorf("saga: memstore: renew %s for %s: %w", id, owner, ErrLeaseLost)
	}
	rec.LeaseExpiry = now.Add(ttl)
	m.rows[id] = rec
	return nil
}

// Save implements [Store.Save].
func (m *MemStore) Save(_ context.Context, rec Record, ev Event) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.rows[rec.ID]
	now := m.now()
	if !ok || old.Version != rec.Version || rec.LeaseOwner == "" || old.LeaseOwner != rec.LeaseOwner || !old.LeaseExpiry.After(now) {
		return Record{}, fmt.Errorf("saga: memstore: save %s (version %d) for %s: %w", rec.ID, rec.Version, rec.LeaseOwner, ErrLeaseLost)
	}
	next := old
	next.State = bytes.Clone(rec.State)
	next.Status, next.Step, next.InFlight, next.Reason = rec.Status, rec.Step, rec.InFlight, rec.Reason
	next.Version++
	next.UpdatedAt = now
	if err := m.apply(next, ev); err != nil {
		return Record{}, err
	}
	m.rows[rec.ID] = next
	return clone(next), nil
}

// Release implements [Store.Release].
func (m *MemStore) Release(_ context.Context, id, owner string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.rows[id]
	if !ok || owner == "" || rec.LeaseOwner != owner {
		return nil
	}
	rec.LeaseOwner, rec.LeaseExpiry = "", time.Time{}
	m.rows[id] = rec
	return nil
}
