// Command loadgen sends a unary Connect JSON call at a fixed rate (open
// loop: each call starts on its schedule whether or not earlier ones have
// answered) and prints the latency distribution measured from each call's
// scheduled start, so a server that falls behind shows its queueing
// instead of hiding it (no coordinated omission). scripts/bench.sh uses it
// for the latency a proxy adds at a given load, which wrk and this
// machine's h2load cannot hold a rate for.
//
//	loadgen -url http://127.0.0.1:8080/shop.user.v1.UserService/GetUser \
//	  -body '{"id":"..."}' -rate 5000 -duration 10s [-h2c] [-H 'Authorization: Bearer …']
//
// -method GET sends no body (a REST or Connect GET URL); -grpc sends the
// body as one gRPC message (-body is then the binary message's hex) and
// counts a call as good only when its grpc-status trailer is 0.
//
// Output, one line: rate=… sent=… ok=… failed=… p50=… p90=… p99=… p999=… max=…
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// headers is a repeatable -H flag.
type headers []string

func (h *headers) String() string     { return strings.Join(*h, ", ") }
func (h *headers) Set(v string) error { *h = append(*h, v); return nil }

func main() {
	url := flag.String("url", "", "procedure URL")
	body := flag.String("body", "{}", "JSON request message")
	rate := flag.Int("rate", 1000, "calls per second")
	duration := flag.Duration("duration", 10*time.Second, "how long to send")
	h2c := flag.Bool("h2c", false, "HTTP/2 without TLS (one connection, multiplexed) instead of HTTP/1.1 keep-alive")
	conns := flag.Int("conns", 64, "HTTP/1.1 connections at most")
	timeout := flag.Duration("timeout", 5*time.Second, "per-call timeout")
	method := flag.String("method", http.MethodPost, "HTTP method; GET sends no body")
	grpc := flag.Bool("grpc", false, "gRPC: -body is the request message in hex, sent framed; good means grpc-status 0")
	var extra headers
	flag.Var(&extra, "H", "a header to send, \"Name: value\" (repeatable)")
	flag.Parse()
	if *url == "" || *rate <= 0 {
		flag.Usage()
		os.Exit(2)
	}

	transport := &http.Transport{MaxConnsPerHost: *conns, MaxIdleConnsPerHost: *conns, DisableCompression: true}
	if *h2c {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		transport = &http.Transport{Protocols: p, DisableCompression: true}
	}
	client := &http.Client{Transport: transport, Timeout: *timeout}
	payload := []byte(*body)
	contentType := "application/json"
	if *grpc {
		msg, err := hex.DecodeString(*body)
		if err != nil {
			fmt.Fprintf(os.Stderr, "loadgen: -body must be hex with -grpc: %v\n", err)
			os.Exit(2)
		}
		payload = append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg))), msg...)
		contentType = "application/grpc"
	}
	call := func() bool {
		var rd io.Reader
		if *method != http.MethodGet {
			rd = bytes.NewReader(payload)
		}
		req, err := http.NewRequestWithContext(context.Background(), *method, *url, rd)
		if err != nil {
			return false
		}
		if rd != nil {
			req.Header.Set("Content-Type", contentType)
		}
		if *grpc {
			req.Header.Set("Te", "trailers")
		}
		for _, h := range extra {
			name, value, _ := strings.Cut(h, ":")
			req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		res, err := client.Do(req)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if *grpc {
			return res.StatusCode == http.StatusOK && res.Trailer.Get("Grpc-Status") == "0"
		}
		return res.StatusCode == http.StatusOK
	}
	// Warm the connections.
	for range 4 {
		call()
	}

	interval := time.Second / time.Duration(*rate)
	total := int(duration.Seconds() * float64(*rate))
	latencies := make([]time.Duration, total)
	ok := make([]bool, total)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		wg.Go(func() {
			ok[i] = call()
			latencies[i] = time.Since(due)
		})
	}
	wg.Wait()
	var good []time.Duration
	failed := 0
	for i, l := range latencies {
		if ok[i] {
			good = append(good, l)
		} else {
			failed++
		}
	}
	slices.Sort(good)
	q := func(p float64) time.Duration {
		if len(good) == 0 {
			return 0
		}
		return good[min(len(good)-1, int(p*float64(len(good))))]
	}
	fmt.Printf("rate=%d sent=%d ok=%d failed=%d p50=%s p90=%s p99=%s p999=%s max=%s\n",
		*rate, total, len(good), failed, q(0.5), q(0.9), q(0.99), q(0.999), q(1))
}
