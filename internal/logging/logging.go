// Package logging builds the structured JSON loggers every Keel process
// writes with. Levels are held in a [slog.LevelVar] so configuration can
// change them while the process runs.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// New returns a JSON logger writing to w at the level held by level, with
// the process's service name on every record.
func New(w io.Writer, level *slog.LevelVar, service string) *slog.Logger {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	return slog.New(h).With(slog.String("service", service))
}

// ParseLevel reads a level name (debug, info, warn, error), case-insensitive.
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}
