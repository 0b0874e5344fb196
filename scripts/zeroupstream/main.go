// Command zeroupstream is the upstream that costs nothing, for measuring
// a proxy hop on its own: a plain net/http handler that answers every
// request with one fixed GetUser answer in the codec and protocol it was
// asked in (Connect JSON, Connect binary as the edge's REST transcoder
// sends, or gRPC with its trailers), over HTTP/1.1 and h2c on one port. scripts/bench.sh puts it behind the edge
// and behind nginx, beside the real user service, so a slow upstream does
// not hide what the hop costs.
//
//	zeroupstream -addr 127.0.0.1:0   # prints the address it listens on
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	userv1 "github.com/keelplatform/keel/gen/go/shop/user/v1"
)

// answer is a GetUserResponse in Connect JSON.
const answer = `{"user":{"id":"0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10","email":"bench@example.com","displayName":"Bench"}}`

// binaryAnswer is the same answer in protobuf binary.
func binaryAnswer() []byte {
	b, err := proto.Marshal(&userv1.GetUserResponse{User: &userv1.User{
		Id: "0b5a3f4e-7c1d-4a8e-9f55-2f4b8b1c9d10", Email: "bench@example.com", DisplayName: "Bench",
	}})
	if err != nil {
		panic(err)
	}
	return b
}

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
	bin := binaryAnswer()
	binLength := strconv.Itoa(len(bin))
	framed := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(bin)))
	framed = append(framed, bin...)
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Protocols: protocols,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			h := w.Header()
			switch ct := r.Header.Get("Content-Type"); {
			case strings.HasPrefix(ct, "application/grpc"):
				h["Content-Type"] = []string{"application/grpc"}
				h["Trailer"] = []string{"Grpc-Status"}
				_, _ = w.Write(framed)
				h["Grpc-Status"] = []string{"0"}
			case ct == "application/proto":
				h["Content-Type"] = []string{"application/proto"}
				h["Content-Length"] = []string{binLength}
				_, _ = w.Write(bin)
			default:
				h["Content-Type"] = []string{"application/json"}
				h["Content-Length"] = []string{length}
				_, _ = io.WriteString(w, answer)
			}
		}),
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 1000},
	}
	if err := srv.Serve(ln); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
