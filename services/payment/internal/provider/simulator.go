package provider

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keelplatform/keel/services/payment/internal/ledger"
)

// maxTrackedKeys bounds the attempt counts a [Simulator] keeps; when it is
// reached the counts start over.
const maxTrackedKeys = 100_000

// Rules say how a [Simulator] answers. The zero value takes every charge at
// once.
type Rules struct {
	// DeclineOverMinor declines charges of more than this many minor
	// units with [ReasonAmountOverLimit]; 0 means no limit.
	DeclineOverMinor int64
	// DeclineUsers lists user ids whose charges are declined with
	// [ReasonUserBlocked].
	DeclineUsers []string
	// FailureRate is the share, 0 to 1, of charges that fail with
	// [ErrUnavailable].
	FailureRate float64
	// Latency is how long every charge takes to answer.
	Latency time.Duration
}

// Simulator is a deterministic [Provider] for development and tests: it
// takes no real money and answers by its [Rules], which may change while
// it runs, and keeps [Books] of what it charged and refunded as a real
// provider would: a charge or refund whose key is in the books is
// answered as the first time, without moving money again (even after
// the rules changed), and refunds never exceed their charge. Whether an
// attempt fails as unavailable depends only on its key and on how many
// times the key was tried before (counted in memory, per simulator), so
// a run is reproducible and a retry of a failed charge may succeed. It
// is safe for concurrent use.
type Simulator struct {
	rules atomic.Pointer[compiledRules]
	books *Books

	mu sync.Mutex
	// attempts counts the failed attempts of each key: only the keys whose
	// last attempt failed are kept, up to maxTrackedKeys.
	attempts map[string]uint64
}

// compiledRules are [Rules] ready for lookups.
type compiledRules struct {
	Rules
	blocked map[string]bool
}

var _ Provider = (*Simulator)(nil)

// NewSimulator returns a simulator answering by rules and keeping its
// books in books, which it does not close.
func NewSimulator(rules Rules, books *Books) *Simulator {
	s := &Simulator{books: books, attempts: map[string]uint64{}}
	s.SetRules(rules)
	return s
}

// SetRules changes the rules; they apply to the charges that start from
// now on.
func (s *Simulator) SetRules(rules Rules) {
	c := &compiledRules{Rules: rules, blocked: make(map[string]bool, len(rules.DeclineUsers))}
	c.DeclineUsers = slices.Clone(rules.DeclineUsers)
	for _, u := range rules.DeclineUsers {
		c.blocked[u] = true
	}
	s.rules.Store(c)
}

// Charge implements [Provider]. It waits for the latency and fails the
// share of attempts given by the failure rate, recording nothing; then a
// key in the books gets its first answer, and a new one is declined
// (blocked users, amounts over the limit) or taken, and recorded so.
func (s *Simulator) Charge(ctx context.Context, key, userID string, amount ledger.Money) error {
	r := s.rules.Load()
	if r.Latency > 0 {
		t := time.NewTimer(r.Latency)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	if r.FailureRate > 0 && s.fails(key, r.FailureRate) {
		return ErrUnavailable
	}
	s.forget(key)
	reason := ""
	switch {
	case r.blocked[userID]:
		reason = ReasonUserBlocked
	case r.DeclineOverMinor > 0 && amount.Minor > r.DeclineOverMinor:
		reason = ReasonAmountOverLimit
	}
	return s.books.charge(ctx, key, userID, amount, reason)
}

// Refund implements [Provider]. The rules do not apply to refunds: a
// refund of a charge taken is given back at once, within what is left of
// the charge.
func (s *Simulator) Refund(ctx context.Context, key, chargeKey string, amount *ledger.Money) (ledger.Money, error) {
	return s.books.refund(ctx, key, chargeKey, amount)
}

// Statement returns what the simulator's books hold now.
func (s *Simulator) Statement(ctx context.Context) (Statement, error) {
	return s.books.Statement(ctx)
}

// fails decides whether this attempt of key fails: when the hash of the
// key and the attempt's number, read as a number in [0, 1), is below
// rate.
func (s *Simulator) fails(key string, rate float64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	attempt := s.attempts[key]
	sum := sha256.Sum256(strconv.AppendUint(append([]byte(key), 0), attempt, 10))
	u := float64(binary.BigEndian.Uint64(sum[:8])>>11) / (1 << 53)
	if u >= rate || math.IsNaN(rate) {
		return false
	}
	if len(s.attempts) >= maxTrackedKeys {
		clear(s.attempts)
	}
	s.attempts[key] = attempt + 1
	return true
}

// forget drops the attempt count of a key whose attempt got an answer.
func (s *Simulator) forget(key string) {
	s.mu.Lock()
	delete(s.attempts, key)
	s.mu.Unlock()
}
