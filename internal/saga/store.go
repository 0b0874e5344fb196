package saga

import (
	"context"
	"time"
)

// Store keeps saga records. Each method is one statement on the table the
// package documentation shows (two for Create), and every write is
// conditional, so that two orchestrators can never both write one saga:
// only the holder of a live lease writes a record's content, and only if
// the record has not changed since it read it.
//
// Lease expiry is decided by the store's clock alone (the database's
// now(), or one process's clock): callers pass durations, never times.
//
// A service that keeps its own tables in step with its sagas (an order's
// status and history) does so inside Create and Save, in the same
// transaction as the saga row, so that both are written or neither is;
// Create and Save then return that transaction's error. [MemStore.Apply]
// is the same hook for the in-memory store.
//
// Implementations must be safe for concurrent use.
type Store interface {
	// Create inserts rec, leased to rec.LeaseOwner for ttl, with Version
	// 1 and CreatedAt and UpdatedAt now, and returns it as stored with
	// created true; rec's LeaseExpiry, Version and times are ignored. If
	// a saga with rec.ID exists, whatever its definition, status or
	// lease, it writes nothing and returns that saga with created false.
	// Two concurrent Creates of one id create it once. In SQL:
	//
	//	INSERT ... ON CONFLICT (id) DO NOTHING RETURNING *
	//	-- no row: SELECT ... WHERE id = $id
	//
	// plus, when the row was inserted, the caller's own inserts (the
	// order, PENDING) in the same transaction.
	Create(ctx context.Context, rec Record, ttl time.Duration) (stored Record, created bool, err error)

	// Get returns the saga id, or an error wrapping [ErrNotFound].
	Get(ctx context.Context, id string) (Record, error)

	// Unfinished returns the sagas of the definition that are Running or
	// Compensating, whoever holds their lease, in any order.
	Unfinished(ctx context.Context, definition string) ([]Record, error)

	// Acquire gives the lease of saga id to owner for ttl, if the saga is
	// unfinished and its lease is free or expired (even one owner cannot
	// take a lease it holds). It increments Version, so any write
	// prepared under an earlier lease fails, and returns the record as
	// stored. Otherwise it returns an error wrapping [ErrNotAcquired]. In
	// SQL:
	//
	//	UPDATE sagas SET lease_owner = $owner, lease_expiry = now() + $ttl,
	//	       version = version + 1
	//	WHERE id = $id AND status IN ('running', 'compensating')
	//	  AND (lease_owner = '' OR lease_expiry <= now())
	//	RETURNING *
	Acquire(ctx context.Context, id, owner string, ttl time.Duration) (Record, error)

	// Renew extends the lease owner holds on saga id to ttl from now, if
	// it holds it and it has not expired; otherwise it returns an error
	// wrapping [ErrLeaseLost]. It leaves Version alone. In SQL:
	//
	//	UPDATE sagas SET lease_expiry = now() + $ttl
	//	WHERE id = $id AND lease_owner = $owner AND lease_expiry > now()
	Renew(ctx context.Context, id, owner string, ttl time.Duration) error

	// Save writes rec's content (State, Status, Step, InFlight, Reason)
	// if the stored record has rec.Version and a lease held by
	// rec.LeaseOwner that has not expired. It increments Version, sets
	// UpdatedAt, leaves the lease and CreatedAt alone, and returns the
	// record as stored. Otherwise it writes nothing and returns an error
	// wrapping [ErrLeaseLost]. ev says what the write records, for the
	// caller's own tables, updated in the same transaction. In SQL:
	//
	//	UPDATE sagas SET state = $state, status = $status, step = $step,
	//	       in_flight = $in_flight, reason = $reason,
	//	       version = version + 1, updated_at = now()
	//	WHERE id = $id AND version = $version
	//	  AND lease_owner = $owner AND lease_expiry > now()
	//	RETURNING *
	Save(ctx context.Context, rec Record, ev Event) (Record, error)

	// Release frees the lease owner holds on saga id, if it holds it
	// (expired or not); otherwise it does nothing and returns nil. In
	// SQL:
	//
	//	UPDATE sagas SET lease_owner = '', lease_expiry = NULL
	//	WHERE id = $id AND lease_owner = $owner
	Release(ctx context.Context, id, owner string) error
}
