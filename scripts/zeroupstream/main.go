// Command zeroupstream is the upstream that costs nothing, for measuring
// a proxy hop on its own: a plain net/http handler that answers every
// request with one fixed Connect JSON message (a GetUser answer), over
// HTTP/1.1 and h2c on one port. scripts/bench.sh puts it behind the edge
// and behind nginx, beside the real user service, so a slow upstream does
// not hide what the hop costs.
//
//	zeroupstream -addr 127.0.0.1:0   # prints the address it listens on
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
)

// answer is a GetUserResponse in Connect JSON.
const answer = `{"user":{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10","email":"bench@example.com","displayName":"Bench"}}`

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "host:port to listen on")
	flag.Parse()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().String())
	length := strconv.Itoa(len(answer))
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: protocols,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			h := w.Header()
			h["Content-Type"] = []string{"application/json"}
			h["Content-Length"] = []string{length}
			_, _ = io.WriteString(w, answer)
		}),
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 1000},
	}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
