package config

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/keelplatform/keel/internal/logging"
)

// Process holds the settings every Keel process has. Embed it inline in a
// process's settings struct, which then has the keys log_level, server/...
// and feature_flags/... next to its own:
//
//	type Settings struct {
//		config.Process `yaml:",inline"`
//		// TokenTTL is how long a login token is valid. Default 1h.
//		TokenTTL time.Duration `yaml:"token_ttl"`
//	}
//
// A settings struct with a Validate method of its own should call
// Process.Validate from it.
type Process struct {
	// LogLevel is the lowest level logged: debug, info, warn or error.
	// Dynamic; apply it with [FollowLogLevel]. Default info.
	LogLevel string `yaml:"log_level"`
	// Server is how the process listens.
	Server Server `yaml:"server"`
	// FeatureFlags turns named features on (true) or off (false) while the
	// process runs; a name not listed is off. Dynamic. Default none.
	FeatureFlags map[string]bool `yaml:"feature_flags"`
	// Calls is how the process calls its peers. Dynamic. Defaults: see
	// [DefaultCalls].
	Calls Calls `yaml:"calls"`
	// Shedding limits the calls the process serves at once. Dynamic.
	// Defaults: see [DefaultShedding].
	Shedding Shedding `yaml:"shedding"`
}

// Server is how a process listens and shuts down.
type Server struct {
	// Addr is the host:port to listen on. Static. Default "127.0.0.1:0"
	// (any free loopback port).
	Addr string `yaml:"addr" keel:"static"`
	// AdminAddr, when set, is a separate host:port for the operators'
	// endpoints (/metrics, /debug/config/status), which then are not served
	// on Addr: set it where Addr is public, as for the edge. Static.
	// Default "" (same port).
	AdminAddr string `yaml:"admin_addr" keel:"static"`
	// MaxRequestBytes bounds one request message, from 1 KiB to 1 GiB.
	// Static. Default 4 MiB.
	MaxRequestBytes int `yaml:"max_request_bytes" keel:"static"`
	// ShutdownTimeout bounds how long in-flight calls may run after the
	// listener closes; it must be positive. Dynamic. Default 10s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// DrainDelay is how long the process keeps serving, reporting
	// NOT_SERVING, once shutdown starts; it must not be negative. Dynamic.
	// Default 0.
	DrainDelay time.Duration `yaml:"drain_delay"`
	// MaxTimeout is the longest deadline a caller may give a call this
	// process answers, from 100ms to 1h. A caller asking for more (a
	// connect-timeout-ms of ten digits) gets this much: the call's
	// deadline, the one it carries downstream, and the time the client
	// may take to send its request all end there, so a client trickling
	// its body cannot hold a connection longer. A unary Connect call that
	// asks for no deadline gets this one. Dynamic. Default 15s, a few
	// seconds above the longest deadline the platform's own calls use
	// (calls/timeout, 10s).
	MaxTimeout time.Duration `yaml:"max_timeout"`
}

// Limits of [Server.MaxRequestBytes].
const (
	minRequestBytes = 1 << 10
	maxRequestBytes = 1 << 30
)

// DefaultProcess returns the documented defaults of [Process].
func DefaultProcess() Process {
	return Process{
		LogLevel: "info",
		Server: Server{
			Addr:            "127.0.0.1:0",
			MaxRequestBytes: 4 << 20,
			ShutdownTimeout: 10 * time.Second,
			MaxTimeout:      15 * time.Second,
		},
		Calls:    DefaultCalls(),
		Shedding: DefaultShedding(),
	}
}

// ProcessConfig returns p. A settings struct that embeds Process gets this
// method, which lets helpers such as [FollowLogLevel] find the common
// settings.
func (p Process) ProcessConfig() Process { return p }

// Validate reports every setting out of range, each as a [KeyError].
func (p Process) Validate() error {
	var errs []error
	if _, err := logging.ParseLevel(p.LogLevel); err != nil {
		errs = append(errs, &KeyError{Key: "log_level", Err: err})
	}
	if p.Server.Addr == "" {
		errs = append(errs, &KeyError{Key: "server/addr", Err: errors.New("must not be empty")})
	}
	if n := p.Server.MaxRequestBytes; n < minRequestBytes || n > maxRequestBytes {
		errs = append(errs, &KeyError{Key: "server/max_request_bytes", Err: fmt.Errorf("%d is out of range [%d, %d]", n, minRequestBytes, maxRequestBytes)})
	}
	if d := p.Server.ShutdownTimeout; d <= 0 {
		errs = append(errs, &KeyError{Key: "server/shutdown_timeout", Err: fmt.Errorf("%s must be positive", d)})
	}
	if d := p.Server.DrainDelay; d < 0 {
		errs = append(errs, &KeyError{Key: "server/drain_delay", Err: fmt.Errorf("%s must not be negative", d)})
	}
	if d := p.Server.MaxTimeout; d < 100*time.Millisecond || d > time.Hour {
		errs = append(errs, &KeyError{Key: "server/max_timeout", Err: fmt.Errorf("%s is out of range [100ms, 1h0m0s]", d)})
	}
	errs = append(errs, p.Calls.validate("calls")...)
	errs = append(errs, p.Shedding.validate("shedding")...)
	return errors.Join(errs...)
}

// Level returns the parsed [Process.LogLevel]; info if it does not parse
// (Validate rejects that).
func (p Process) Level() slog.Level {
	l, err := logging.ParseLevel(p.LogLevel)
	if err != nil {
		return slog.LevelInfo
	}
	return l
}

// Enabled reports whether the feature flag name is on.
func (p Process) Enabled(name string) bool { return p.FeatureFlags[name] }

// FollowLogLevel sets level to the log level in effect and keeps it so as
// the configuration changes.
func FollowLogLevel[T interface{ ProcessConfig() Process }](w *Watcher[T], level *slog.LevelVar) {
	w.OnChange(func(_, cfg T) { level.Set(cfg.ProcessConfig().Level()) })
	level.Set(w.Current().ProcessConfig().Level())
}
