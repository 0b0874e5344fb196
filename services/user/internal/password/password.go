// Package password hashes and verifies passwords with argon2id (RFC 9106),
// encoded in the PHC string format:
//
//	$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//
// with salt and hash in unpadded standard base64. The parameters travel
// inside each encoded hash, so they can be raised later without breaking
// stored hashes. Nothing here logs a password or puts it in an error.
package password

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// Params are argon2id's cost parameters.
type Params struct {
	// Time is the number of passes over memory.
	Time uint32
	// Memory is the memory used, in KiB.
	Memory uint32
	// Threads is the degree of parallelism.
	Threads uint8
}

// DefaultParams is OWASP's minimum recommendation for argon2id (Password
// Storage Cheat Sheet): 19 MiB of memory, 2 passes, 1 thread. It costs a few
// tens of milliseconds per hash on one core, which bounds a login's CPU cost
// while keeping offline guessing expensive. Tests may pass cheaper Params:
// the algorithm and the encoding stay the same.
var DefaultParams = Params{Time: 2, Memory: 19 * 1024, Threads: 1}

const (
	saltLen = 16
	keyLen  = 32
	// maxMemory caps the memory an encoded hash may ask Verify for (1 GiB),
	// so a corrupted row cannot exhaust the process.
	maxMemory = 1 << 20
	maxTime   = 64
)

// ErrMalformedHash means an encoded hash is not a PHC argon2id string this
// package can verify.
var ErrMalformedHash = errors.New("password: malformed argon2id hash")

// Hash returns the PHC-encoded argon2id hash of password under p, with a
// fresh random 16-byte salt, so two hashes of one password differ.
func Hash(password string, p Params) (string, error) {
	if p.Time == 0 || p.Memory == 0 || p.Threads == 0 {
		return "", fmt.Errorf("password: invalid parameters t=%d m=%d p=%d", p.Time, p.Memory, p.Threads)
	}
	salt := make([]byte, saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("password: read salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, keyLen)
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// Verify reports whether password matches the encoded hash, comparing in
// constant time. It returns an error only when encoded is malformed.
func Verify(password, encoded string) (bool, error) {
	p, salt, want, err := decode(encoded)
	if err != nil {
		return false, err
	}
	got := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

func decode(encoded string) (Params, []byte, []byte, error) {
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return Params{}, nil, nil, ErrMalformedHash
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return Params{}, nil, nil, fmt.Errorf("%w: unsupported version", ErrMalformedHash)
	}
	var p Params
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil {
		return Params{}, nil, nil, fmt.Errorf("%w: parameters", ErrMalformedHash)
	}
	if p.Time == 0 || p.Time > maxTime || p.Memory == 0 || p.Memory > maxMemory || p.Threads == 0 {
		return Params{}, nil, nil, fmt.Errorf("%w: parameters out of range", ErrMalformedHash)
	}
	b64 := base64.RawStdEncoding
	salt, err := b64.DecodeString(parts[4])
	if err != nil || len(salt) == 0 {
		return Params{}, nil, nil, fmt.Errorf("%w: salt", ErrMalformedHash)
	}
	key, err := b64.DecodeString(parts[5])
	if err != nil || len(key) < 16 {
		return Params{}, nil, nil, fmt.Errorf("%w: hash", ErrMalformedHash)
	}
	return p, salt, key, nil
}
