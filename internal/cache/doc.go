// Package cache is the read-through cache Keel services put in front of
// their database reads (an inventory item, a user): values are bytes,
// usually a marshalled protobuf message, keys are strings, and each
// [Cache] is one namespace (Options.Name, e.g. "inventory:item").
//
// A read ([Cache.Get]) is answered from the first of:
//
//   - process memory: with Redis, its client-side caching (rueidis
//     DoCache: RESP3 and CLIENT TRACKING), which Redis invalidates as soon
//     as the key changes in any process, kept at most local_ttl;
//   - Redis, where every process of the service shares the entry;
//   - the loader (the database), whose answer is then written to Redis
//     for ttl, or for negative_ttl when it is "does not exist".
//
// Without Redis (redis_addr empty, the embedded default) the cache keeps
// its entries in process memory, bounded by local_max_bytes, with the
// same behaviour otherwise. With enabled false it keeps nothing: every
// read goes to the loader, and filters let every id through (to measure
// what the cache saves, or to rule it out while chasing a stale read).
//
// The usual failure modes of a cache in front of a database are handled
// here, so a service does not have to:
//
//   - Stampede (many readers miss one hot key at once): concurrent misses
//     of a key in one process make one load (singleflight); across
//     processes, the one that sets the key to its lock (SET NX PX
//     lock_ttl) loads it and replaces the lock with the value, while the
//     others wait for the value, reading the key from their client-side
//     cache until Redis invalidates it. A load that outlives lock_ttl is
//     raced by the next process.
//   - Penetration (reads of ids that do not exist, which always miss): a
//     [Filter], a Bloom filter of the ids that exist, stored in Redis as a
//     bit string (k bits per id by double hashing of one 64-bit hash,
//     sized from the expected ids and false-positive rate), rebuilt from
//     the database at start and added to on create, answers
//     [ErrNotFound] for ids that cannot exist ([Cache.GetChecked]); ids
//     it lets through that the loader does not find are cached as short
//     negative entries.
//   - Avalanche (many entries expiring at once): every TTL varies
//     randomly by up to jitter (±10% by default).
//   - Stale reads after a write: [Cache.Invalidate] deletes the keys in
//     Redis, which invalidates every process's copy; a load racing the
//     invalidation does not write its possibly stale result (the lock it
//     would replace is gone), and the invalidating process reads its own
//     write at once: its reads do not wait for a load begun before the
//     invalidation.
//   - Redis slow, down or partitioned: every Redis call is bounded by
//     timeout, and a circuit breaker (failsafe-go) stops calling Redis
//     once calls fail, probing it again after breaker/open_for. Reads
//     then go to the loader, and callers see no error; the cache uses
//     Redis again by itself when it answers. A process whose connection
//     to Redis goes silent stops serving its copies in memory within a
//     few seconds (10×timeout, at least 1s, then the connection is
//     dropped). Invalidations and filter additions Redis missed are
//     applied when it is back. [New] succeeds without Redis, returns by
//     ctx's deadline, and connects once Redis appears.
//   - A filter never rejects an id added to it, within what one process
//     can know: every process's filter lets every id through while the
//     breaker is open or its own Redis calls fail (once one has failed,
//     it reads the filter in Redis rather than its copy in memory, until
//     Redis answers), and the filter of a process whose [Filter.Add]
//     Redis missed (Add returned an error) lets every id through until
//     the add is written, which it retries by itself. Other processes
//     cannot know of that add: they may reject the id until it reaches
//     Redis. An Add that returned nil is in Redis: no process rejects
//     the id once Redis's invalidation of its copy of the filter reaches
//     it (within a round trip).
//
// Keys in Redis are key_prefix + name + ":" + key and hold a tagged value
// ("v" and the bytes, "n" for does-not-exist, "l" and a token for a
// load's lock); filters are key_prefix + "filter:{name:filter}:m:k".
// The Redis username and password come from KEEL_REDIS_USERNAME and
// KEEL_REDIS_PASSWORD, never from the configuration, and are never
// logged.
//
// Metrics, all labelled cache=<name>: keel_cache_hits_total{tier=local|redis},
// keel_cache_negative_hits_total, keel_cache_misses_total,
// keel_cache_loads_total, keel_cache_load_errors_total,
// keel_cache_lock_waits_total, keel_cache_bloom_rejections_total,
// keel_cache_redis_errors_total and keel_cache_breaker_state (0 closed,
// 1 half-open, 2 open).
package cache
