// Command refproxy is a reference for the edge's benchmark: the least a
// proxy written in Go can cost on this machine, measured in the same run
// as the edge and nginx, so that a ratio against nginx can be read against
// what Go itself allows. It serves HTTP/1.1 only, with no policy of any
// kind, in one of two modes:
//
//	bytes    a dedicated upstream connection per caller connection; each
//	         request and response is copied as bytes (headers up to the
//	         blank line, then Content-Length bytes of body), nothing parsed
//	         beyond that. No real proxy can be this thin: it is the floor.
//	nethttp  net/http's server in front of Keel's own pooled upstream
//	         client (internal/h1pool), headers copied, nothing else: what
//	         any proxy built on net/http pays before it decides anything.
//
//	refproxy -mode bytes -addr 127.0.0.1:9000 -upstream 127.0.0.1:9001
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/keelplatform/keel/internal/h1pool"
)

func main() {
	mode := flag.String("mode", "bytes", "bytes or nethttp")
	addr := flag.String("addr", "127.0.0.1:0", "host:port to listen on")
	upstream := flag.String("upstream", "", "host:port of the upstream")
	flag.Parse()
	if *upstream == "" {
		fail(errors.New("-upstream is required"))
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fail(err)
	}
	fmt.Println(ln.Addr().String())
	switch *mode {
	case "bytes":
		for {
			c, err := ln.Accept()
			if err != nil {
				fail(err)
			}
			go copyExchanges(c, *upstream)
		}
	case "nethttp":
		fail(http.Serve(ln, poolProxy(h1pool.New(*upstream, h1pool.Options{}))))
	default:
		fail(fmt.Errorf("unknown -mode %q: bytes or nethttp", *mode))
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "refproxy:", err)
	os.Exit(1)
}

// copyExchanges relays requests from c to a connection of its own to
// upstream, and their responses back, one exchange at a time.
func copyExchanges(c net.Conn, upstream string) {
	defer c.Close()
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer u.Close()
	cr, ur := bufio.NewReader(c), bufio.NewReader(u)
	var msg bytes.Buffer
	for {
		if readMessage(cr, &msg) != nil {
			return
		}
		if _, err := u.Write(msg.Bytes()); err != nil {
			return
		}
		if readMessage(ur, &msg) != nil {
			return
		}
		if _, err := c.Write(msg.Bytes()); err != nil {
			return
		}
	}
}

// readMessage reads one HTTP/1.1 message with a Content-Length body (or
// none) from r into msg, as it came.
func readMessage(r *bufio.Reader, msg *bytes.Buffer) error {
	msg.Reset()
	length := 0
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return err
		}
		msg.Write(line)
		if len(line) <= 2 {
			break
		}
		const name = "content-length:"
		if len(line) > len(name) && bytes.EqualFold(line[:len(name)], []byte(name)) {
			if length, err = strconv.Atoi(string(bytes.TrimSpace(line[len(name):]))); err != nil {
				return err
			}
		}
	}
	_, err := io.CopyN(msg, r, int64(length))
	return err
}

// poolProxy sends every request to pool's upstream and copies the
// response back.
func poolProxy(pool *h1pool.Pool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.RequestURI = ""
		res, err := pool.RoundTrip(r)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer res.Body.Close()
		h := w.Header()
		for k, v := range res.Header {
			h[k] = v
		}
		w.WriteHeader(res.StatusCode)
		_, _ = io.Copy(w, res.Body)
	})
}
