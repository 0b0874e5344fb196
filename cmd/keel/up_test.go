package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestUpPrintsAWorkingCurlLineAndStopsCleanly runs `keel up` as a user
// does, runs the curl line it prints, and stops it as Ctrl-C does.
func TestUpPrintsAWorkingCurlLineAndStopsCleanly(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr lockedBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"up", "--env", "test", "--config-dir", "../../consul/kv", "--addr", "127.0.0.1:0", "--data-dir", t.TempDir()}, &stdout, &stderr)
	}()

	curl := regexp.MustCompile(`(?s)curl -s -X POST (\S+) \\\s+-H 'Content-Type: application/json' \\\s+-d '([^']+)'`)
	var m []string
	for deadline := time.Now().Add(10 * time.Second); m == nil; {
		if m = curl.FindStringSubmatch(stdout.String()); m == nil {
			if time.Now().After(deadline) {
				t.Fatalf("no curl line printed; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	res, err := http.Post(m[1], "application/json", strings.NewReader(m[2]))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"email":"ada@example.com"`) {
		t.Fatalf("the printed curl line got %d %s", res.StatusCode, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("keel up returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("keel up did not stop")
	}
}

func TestUnknownCommandFails(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"frobnicate"}, &out, &out); err == nil || !strings.Contains(err.Error(), "frobnicate") {
		t.Fatalf("want an error naming the command, got %v", err)
	}
}
