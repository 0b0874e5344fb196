package server

import (
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// unknownService answers paths that name no mounted service with
// unimplemented, in the caller's protocol, instead of a plain-text 404.
func unknownService(errors *connect.ErrorWriter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		service, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		_ = errors.Write(w, r, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("unknown service %s", service)))
	})
}

// knownMethodsOnly answers calls to methods the service's contract does not
// have with unimplemented naming the method. Generated handlers answer them
// with a plain-text 404, which no RPC client can decode.
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
			method := strings.TrimPrefix(r.URL.Path, "/"+service+"/")
			_ = errors.Write(w, r, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("service %s has no method %q", service, method)))
			return
		}
		h.ServeHTTP(w, r)
	})
}
