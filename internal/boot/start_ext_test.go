package boot_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keelplatform/keel/internal/boot"
	"github.com/keelplatform/keel/internal/config"
	"github.com/keelplatform/keel/internal/discovery"
	"github.com/keelplatform/keel/internal/server"
)

// refusingRegistry refuses every registration, as an agent that went
// away between the listen and the register would.
type refusingRegistry struct{ discovery.Registry }

func (refusingRegistry) Register(context.Context, discovery.Instance) error {
	return errors.New("agent unreachable")
}

type refusingBackend struct{ boot.Static }

func (b refusingBackend) Registry() discovery.Registry { return refusingRegistry{b.Discovery} }

// storeProcess is a server holding a resource (a store, say) that Close
// must release.
type storeProcess struct {
	*server.Server
	closed *atomic.Bool
}

func (p storeProcess) Close() error {
	p.closed.Store(true)
	return p.Server.Close()
}

// TestFailedStartReleasesWhatItHeld: a process whose registration fails
// after it listens gives back its port and closes what it opened.
func TestFailedStartReleasesWhatItHeld(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	var closed atomic.Bool
	svc := boot.Service[tinySettings]{
		Name:     "tiny",
		Defaults: tinySettings{Process: config.DefaultProcess()},
		Build: func(_ context.Context, env boot.Env[tinySettings]) (boot.Process, error) {
			return storeProcess{Server: env.Server(), closed: &closed}, nil
		},
	}
	_, err = boot.Start(context.Background(), svc, boot.Options{
		Env:       config.EnvLocal,
		ConfigDir: "does-not-exist", // built-in defaults and the environment only
		Backend:   refusingBackend{boot.Static{Discovery: discovery.NewStatic()}},
		Log:       io.Discard,
		LookupEnv: func(name string) (string, bool) {
			if name == "KEEL_SERVER_ADDR" {
				return addr, true
			}
			return "", false
		},
	})
	if err == nil || !strings.Contains(err.Error(), "agent unreachable") {
		t.Fatalf("want the registration's error, got %v", err)
	}
	if !closed.Load() {
		t.Error("the process was not closed after its start failed")
	}
	again, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the port %s is still held after the failed start: %v", addr, err)
	}
	again.Close()
}

// TestInstanceVersionFromTheEnvironment: KEEL_VERSION is the version an
// instance registers with (what the edge's canary routing selects by);
// without it, the build's.
func TestInstanceVersionFromTheEnvironment(t *testing.T) {
	t.Parallel()
	for _, version := range []string{"v2", ""} {
		ctx, cancel := context.WithCancel(context.Background())
		registry := discovery.NewStatic()
		var watcher *config.Watcher[tinySettings]
		r, err := boot.Start(ctx, tinyService(&watcher), boot.Options{
			Env:       config.EnvLocal,
			ConfigDir: t.TempDir() + "/none", // no files: built-in defaults
			Backend:   boot.Static{Discovery: registry},
			Log:       io.Discard,
			LookupEnv: func(name string) (string, bool) {
				if name == boot.VersionVar && version != "" {
					return version, true
				}
				return "", false
			},
		})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		instances, err := registry.Instances("tiny")
		got := ""
		if err == nil {
			got = instances[0].Meta["version"]
		}
		cancel()
		if err := r.Wait(); err != nil {
			t.Error(err)
		}
		switch {
		case version != "" && got != version:
			t.Errorf("KEEL_VERSION=%s: registered version %q", version, got)
		case version == "" && got == "":
			t.Error("without KEEL_VERSION: no version registered")
		}
	}
}
