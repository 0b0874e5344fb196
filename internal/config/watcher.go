package config

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Options says where a process's configuration comes from.
type Options[T any] struct {
	// Service is the process's name; it picks the file <Dir>/<Env>/<Service>.yaml.
	Service string
	// Env is the environment; the zero value means [EnvLocal].
	Env Env
	// Dir is the directory of seed files, normally "consul/kv". Empty
	// means no file layer; otherwise the file must exist.
	Dir string
	// Source is the KV layer, e.g. consul.NewKVSource for
	// keel/<env>/<service>/. Nil means no KV layer and no reloads.
	Source Source
	// Defaults is the built-in layer: T as the process documents it.
	Defaults T
	// Logger receives rejections, restarts needed and source errors.
	// Default: slog.Default().
	Logger *slog.Logger
	// LookupEnv reads environment variables. Default: os.LookupEnv.
	LookupEnv func(string) (string, bool)
}

// Status is what a [Watcher] has done, for a metric or a health detail.
type Status struct {
	// Version is the Source version of the configuration in effect (0
	// without a Source).
	Version uint64
	// Applied is when the configuration in effect last changed (at start,
	// or when a Source version changed a dynamic key).
	Applied time.Time
	// Rejected counts Source versions rejected because they did not decode
	// or validate.
	Rejected uint64
	// LastRejection is why the last rejected version was rejected; it stays
	// set after later versions are applied. Nil if none was ever rejected.
	LastRejection error
	// LastRejected is when the last rejected version was rejected; zero if
	// none was ever rejected.
	LastRejected time.Time
	// PendingRestart lists the static keys whose wanted value differs from
	// the running one: they take effect on the next start.
	PendingRestart []string
	// SourceErr is the last error reading the Source, nil once it was read
	// again.
	SourceErr error
}

// Watcher holds the configuration in effect and keeps it current with its
// Source. Create it with [Start]. It is safe for concurrent use.
type Watcher[T any] struct {
	schema   *schema
	defaults T
	file     layer
	env      layer
	source   Source
	logger   *slog.Logger

	current atomic.Pointer[T]

	mu     sync.Mutex
	subs   []func(old, new T)
	status Status

	cancel context.CancelFunc
	done   chan struct{}

	// restartLogged holds the wanted value last logged as needing a
	// restart, by key, so a pending change is logged once. Only the
	// watching goroutine uses it.
	restartLogged map[string]any
}

// Load builds the configuration once from every layer, without watching.
func Load[T any](ctx context.Context, opts Options[T]) (T, error) {
	w, err := newWatcher(ctx, opts)
	if err != nil {
		var zero T
		return zero, err
	}
	return w.Current(), nil
}

// Start builds the configuration from every layer and, when there is a
// Source, watches it until ctx is done or [Watcher.Close] is called. It
// fails if any layer is unreadable or the result is invalid: a process
// should not start on a configuration it cannot trust. A Source that
// cannot be read at all makes Start fail too (bound the wait with ctx).
func Start[T any](ctx context.Context, opts Options[T]) (*Watcher[T], error) {
	w, err := newWatcher(ctx, opts)
	if err != nil {
		return nil, err
	}
	if w.source == nil {
		close(w.done)
		w.cancel = func() {}
		return w, nil
	}
	ctx, w.cancel = context.WithCancel(ctx)
	go w.watch(ctx, w.status.Version)
	return w, nil
}

// newWatcher reads every layer once and holds the result; it does not
// watch.
func newWatcher[T any](ctx context.Context, opts Options[T]) (*Watcher[T], error) {
	s, err := newSchema(reflect.TypeFor[T]())
	if err != nil {
		return nil, err
	}
	if opts.Env == "" {
		opts.Env = EnvLocal
	}
	if _, err := ParseEnv(string(opts.Env)); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.LookupEnv == nil {
		opts.LookupEnv = os.LookupEnv
	}
	w := &Watcher[T]{
		schema: s, defaults: opts.Defaults, source: opts.Source, logger: opts.Logger,
		done: make(chan struct{}), restartLogged: map[string]any{},
	}
	if w.file, err = s.readFileLayer(opts.Dir, opts.Env, opts.Service); err != nil {
		return nil, err
	}
	if w.env, err = s.envLayer(opts.LookupEnv); err != nil {
		return nil, err
	}
	var snap Snapshot
	if opts.Source != nil {
		if snap, err = opts.Source.Next(ctx, 0); err != nil {
			return nil, fmt.Errorf("config: read %s: %w", opts.Source, err)
		}
	}
	cfg, _, err := w.build(snap)
	if err != nil {
		return nil, fmt.Errorf("config: %s: %w", opts.Service, err)
	}
	w.current.Store(&cfg)
	w.status.Version = snap.Version
	w.status.Applied = time.Now()
	return w, nil
}

// Current returns the configuration in effect. Treat it as read-only: its
// maps and slices are shared.
func (w *Watcher[T]) Current() T { return *w.current.Load() }

// OnChange calls fn with the old and the new configuration after every
// change applied, on the watcher's goroutine, in the order subscribed. A
// slow fn delays later reloads.
func (w *Watcher[T]) OnChange(fn func(old, new T)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subs = append(w.subs, fn)
}

// Status returns what the watcher has done so far.
func (w *Watcher[T]) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := w.status
	st.PendingRestart = slices.Clone(st.PendingRestart)
	return st
}

// Close stops watching and waits for the watcher's goroutine to end. The
// last configuration stays available through Current.
func (w *Watcher[T]) Close() {
	w.cancel()
	<-w.done
}

// build merges the layers over the defaults with snap as the KV layer,
// decodes and validates the result.
func (w *Watcher[T]) build(snap Snapshot) (T, layer, error) {
	var zero T
	kv := layer{}
	if w.source != nil {
		var err error
		if kv, err = w.schema.kvLayer(w.source, snap.Pairs); err != nil {
			return zero, nil, err
		}
	}
	settings := merge(w.file, kv, w.env)
	cfg, err := decode(w.defaults, settings)
	if err != nil {
		return zero, nil, err
	}
	if err := validate(cfg, settings); err != nil {
		return zero, nil, err
	}
	return cfg, settings, nil
}

// sourceRetryFloor keeps a Source that fails without backing off from
// spinning the watcher.
const sourceRetryFloor = 50 * time.Millisecond

func (w *Watcher[T]) watch(ctx context.Context, version uint64) {
	defer close(w.done)
	for {
		snap, err := w.source.Next(ctx, version)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			w.sourceFailed(err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(sourceRetryFloor):
			}
			continue
		}
		w.sourceRecovered()
		version = snap.Version
		w.apply(snap)
	}
}

func (w *Watcher[T]) sourceFailed(err error) {
	w.mu.Lock()
	first := w.status.SourceErr == nil
	w.status.SourceErr = err
	w.mu.Unlock()
	if first {
		w.logger.Warn("config source unreachable; keeping the last configuration", slog.String("source", w.source.String()), slog.Any("error", err))
	}
}

func (w *Watcher[T]) sourceRecovered() {
	w.mu.Lock()
	was := w.status.SourceErr
	w.status.SourceErr = nil
	w.mu.Unlock()
	if was != nil {
		w.logger.Info("config source reachable again", slog.String("source", w.source.String()))
	}
}

// apply builds the configuration from snap and puts it in effect, less
// its changed static keys.
func (w *Watcher[T]) apply(snap Snapshot) {
	cfg, settings, err := w.build(snap)
	if err != nil {
		w.reject(snap.Version, err)
		return
	}
	old := w.Current()
	oldV, newV := reflect.ValueOf(&old).Elem(), reflect.ValueOf(&cfg).Elem()
	var pending, changed []string
	for _, n := range w.schema.values {
		was, want := oldV.FieldByIndex(n.index), newV.FieldByIndex(n.index)
		if reflect.DeepEqual(was.Interface(), want.Interface()) {
			continue
		}
		if n.static {
			pending = append(pending, n.path)
			if logged, ok := w.restartLogged[n.path]; !ok || !reflect.DeepEqual(logged, want.Interface()) {
				w.restartLogged[n.path] = want.Interface()
				w.logger.Warn("config change needs a restart; keeping the running value",
					slog.String("key", n.path), slog.Any("running", was.Interface()), slog.Any("wanted", want.Interface()),
					slog.Uint64("version", snap.Version))
			}
			want.Set(was)
			continue
		}
		changed = append(changed, n.path)
	}
	if len(pending) > 0 {
		// The running static values with the new dynamic ones must hold
		// together too.
		if err := validate(cfg, settings); err != nil {
			w.reject(snap.Version, fmt.Errorf("with the running static values: %w", err))
			return
		}
	}
	for key := range w.restartLogged {
		if !slices.Contains(pending, key) {
			delete(w.restartLogged, key)
		}
	}
	w.mu.Lock()
	w.status.Version = snap.Version
	w.status.PendingRestart = pending
	if len(changed) > 0 {
		w.status.Applied = time.Now()
		w.current.Store(&cfg)
	}
	subs := slices.Clone(w.subs)
	w.mu.Unlock()
	if len(changed) == 0 {
		return
	}
	w.logger.Info("config applied", slog.Uint64("version", snap.Version), slog.Any("changed", changed))
	for _, fn := range subs {
		fn(old, cfg)
	}
}

func (w *Watcher[T]) reject(version uint64, err error) {
	w.mu.Lock()
	w.status.Rejected++
	w.status.LastRejection = err
	w.status.LastRejected = time.Now()
	w.mu.Unlock()
	w.logger.Error("config rejected; keeping the last good configuration",
		slog.Any("keys", ErrorKeys(err)), slog.Uint64("version", version), slog.Any("error", err))
}
