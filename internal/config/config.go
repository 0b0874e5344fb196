// Package config builds a process's typed configuration from layers and
// keeps it current while the process runs.
//
// A process describes its settings as a struct T with yaml tags and
// documents each field's default in its doc comment. The value of T in
// effect is built from four layers, each overriding the one before:
//
//  1. built-in defaults: a value of T the process provides;
//  2. the file <dir>/<env>/<service>.yaml (normally consul/kv/<env>/...);
//  3. the keys under keel/<env>/<service>/ of a [Source], Consul KV in
//     production;
//  4. environment variables KEEL_<PATH>, e.g. KEEL_LOG_LEVEL or
//     KEEL_SERVER_ADDR.
//
// # Keys
//
// The file is a nested YAML mapping. A key names one leaf of T by its path
// of yaml names joined with '/', such as "log_level" or
// "server/max_request_bytes"; in a Source, the key is that path below the
// service's prefix and its value is a YAML scalar, or a YAML or JSON list
// for a list field. The entries of a field of type map[string]V are leaves
// of their own ("feature_flags/new_checkout"). An environment variable is
// the path upper-cased with '/' replaced by '_'; its value is read as YAML,
// except for string fields, which take the value literally. Durations are
// Go duration strings ("1500ms"). A key T does not have is an error that
// names it, so a typo never passes silently.
//
// # Reloads
//
// A [Watcher] keeps the configuration current: a change in the Source
// rebuilds T from all layers. A new T that does not decode or fails its
// Validate method (when T has one) is rejected as a whole: the last good
// value stays, the error is logged with the key, and [Watcher.Status]
// counts it. Every leaf is dynamic unless its field (or an enclosing
// section) has the tag keel:"static": a changed static leaf is logged as
// needing a restart and not applied.
//
// The file and the environment are read once, when the Watcher starts.
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Env is a deployment environment. It selects the directory of seed files
// and the KV prefix keel/<env>/.
type Env string

// The environments Keel knows.
const (
	// EnvLocal is a developer's machine; it is the default.
	EnvLocal Env = "local"
	// EnvTest is the shared test environment and CI.
	EnvTest Env = "test"
	// EnvProd is production.
	EnvProd Env = "prod"
)

// EnvVar is the environment variable that selects the [Env].
const EnvVar = "KEEL_ENV"

// Envs lists every known environment.
func Envs() []Env { return []Env{EnvLocal, EnvTest, EnvProd} }

// ParseEnv returns the environment named s; the empty string means
// [EnvLocal]. Any other unknown name is an error.
func ParseEnv(s string) (Env, error) {
	switch e := Env(strings.TrimSpace(s)); e {
	case "":
		return EnvLocal, nil
	case EnvLocal, EnvTest, EnvProd:
		return e, nil
	default:
		return "", fmt.Errorf("config: unknown environment %q: want local, test or prod", s)
	}
}

// EnvFromEnviron returns the environment selected by the KEEL_ENV variable,
// [EnvLocal] when it is unset.
func EnvFromEnviron() (Env, error) {
	e, err := ParseEnv(os.Getenv(EnvVar))
	if err != nil {
		return "", fmt.Errorf("%s: %w", EnvVar, err)
	}
	return e, nil
}

// KVPrefix is the prefix of a service's keys in Consul KV, with a trailing
// slash: keel/<env>/<service>/.
func KVPrefix(env Env, service string) string {
	return "keel/" + string(env) + "/" + service + "/"
}

// ErrUnknownKey is wrapped by a [KeyError] for a key the settings struct
// does not have.
var ErrUnknownKey = errors.New("unknown key")

// KeyError is a problem with one key: it does not exist, its value has the
// wrong type or does not parse, or it is out of range. A Validate method
// should return KeyErrors (joined with [errors.Join] when there are several)
// so the key reaches logs and [Status].
type KeyError struct {
	// Key is the path of the key, e.g. "server/max_request_bytes".
	Key string
	// Origin tells where the value came from, e.g.
	// "consul:keel/local/user/server/max_request_bytes",
	// "consul/kv/local/user.yaml:12" or "env KEEL_LOG_LEVEL". It may be empty.
	Origin string
	// Err is what is wrong.
	Err error
}

// Error names the key, its origin and the problem.
func (e *KeyError) Error() string {
	if e.Origin == "" {
		return fmt.Sprintf("key %s: %v", e.Key, e.Err)
	}
	return fmt.Sprintf("key %s (from %s): %v", e.Key, e.Origin, e.Err)
}

// Unwrap returns the underlying problem.
func (e *KeyError) Unwrap() error { return e.Err }

// ErrorKeys returns the keys named by the KeyErrors in err, which may join
// several errors, in order and without duplicates.
func ErrorKeys(err error) []string {
	var keys []string
	seen := map[string]bool{}
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if ke, ok := err.(*KeyError); ok {
			if !seen[ke.Key] {
				seen[ke.Key] = true
				keys = append(keys, ke.Key)
			}
			return
		}
		switch u := err.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	return keys
}
