package server

import (
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// NotFound answers a path that is no procedure of a mounted (or routed)
// service as connect-go's own mux does: HTTP 404, which Connect clients
// read as unimplemented, for Connect calls and anything else; and for
// gRPC and gRPC-Web callers, which need a status, unimplemented naming the
// path in their protocol.
func NotFound(errors *connect.ErrorWriter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteNotFound(w, r, errors)
	})
}

// WriteNotFound writes the answer of [NotFound] for r.
func WriteNotFound(w http.ResponseWriter, r *http.Request, errors *connect.ErrorWriter) {
	if ct := r.Header.Get("Content-Type"); strings.HasPrefix(ct, "application/grpc") {
		_ = errors.Write(w, r, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("no procedure %s", r.URL.Path)))
		return
	}
	http.Error(w, fmt.Sprintf("404 no procedure %s", r.URL.Path), http.StatusNotFound)
}

// knownMethodsOnly answers calls to methods the service's contract does not
// have as [NotFound] does, so every unknown procedure gets one answer.
func knownMethodsOnly(service string, h http.Handler, errors *connect.ErrorWriter) http.Handler {
	desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	sd, ok := desc.(protoreflect.ServiceDescriptor)
	if err != nil || !ok {
		return h // not a registered contract; leave routing to the handler
	}
	known := make(map[string]bool, sd.Methods().Len())
	for i := range sd.Methods().Len() {
		known["/"+service+"/"+string(sd.Methods().Get(i).Name())] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !known[r.URL.Path] {
			WriteNotFound(w, r, errors)
			return
		}
		h.ServeHTTP(w, r)
	})
}
