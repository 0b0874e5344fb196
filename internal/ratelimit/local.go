package ratelimit

import (
	"hash/maphash"
	"sync"
	"time"
)

// shards splits a [Local]'s map so that callers on different keys rarely
// wait on one lock.
const shards = 64

// Local limits in process memory. It remembers at most the number of keys
// it was made for: when a shard is full, keys whose state has run out
// (their TAT has passed, so they would start afresh anyway) are dropped
// first, then arbitrary ones until an eighth of the shard is free. A key
// dropped early starts afresh, a full burst: under a flood of distinct
// keys the limit of a few keys loosens, and memory stays bounded. It is
// safe for concurrent use. Create it with [NewLocal].
type Local struct {
	seed   maphash.Seed
	per    int // keys per shard
	shards [shards]localShard
}

type localShard struct {
	mu   sync.Mutex
	tats map[string]int64 // unix nanoseconds
}

// NewLocal returns a limiter remembering up to maxKeys keys (at least
// one per shard, 64).
func NewLocal(maxKeys int) *Local {
	l := &Local{seed: maphash.MakeSeed(), per: max(maxKeys/shards, 1)}
	for i := range l.shards {
		l.shards[i].tats = make(map[string]int64)
	}
	return l
}

// Allow decides one event of key under the limit named name, at now.
func (l *Local) Allow(name, key string, lim Limit, now time.Time) Result {
	k := name + "\x00" + key
	s := &l.shards[maphash.String(l.seed, k)%shards]
	t := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	tat, known := s.tats[k]
	res, next := gcra(tat, t, lim)
	if !res.Allowed {
		return res
	}
	if !known && len(s.tats) >= l.per {
		s.makeRoom(t, l.per)
	}
	s.tats[k] = next
	return res
}

// makeRoom drops the keys whose state has run out and, if that frees
// less than an eighth of the shard, arbitrary keys until it does, so
// the next inserts find room without another sweep.
func (s *localShard) makeRoom(now int64, capacity int) {
	for k, tat := range s.tats {
		if tat <= now {
			delete(s.tats, k)
		}
	}
	target := capacity - max(capacity/8, 1)
	for k := range s.tats {
		if len(s.tats) <= target {
			break
		}
		delete(s.tats, k)
	}
}

// Len is how many keys l remembers now.
func (l *Local) Len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.tats)
		s.mu.Unlock()
	}
	return n
}
