package callpolicy

import (
	"context"
	"net/http"
	"strings"
	"sync"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/keelplatform/keel/internal/wire"
)

// Method is what the call policy knows of the procedure a call invokes.
type Method struct {
	// Name is the method's full protobuf name,
	// "shop.user.v1.UserService.GetUser", which calls/hedge uses.
	Name string
	// Unary calls carry one request and one response message: the answer
	// is read in full before it is returned, and the call may be sent
	// again.
	Unary bool
	// Idempotent calls (NO_SIDE_EFFECTS or IDEMPOTENT in the contract)
	// may be sent again after an instance may have seen them.
	Idempotent bool
	// ReadOnly calls (NO_SIDE_EFFECTS) may also be hedged.
	ReadOnly bool
}

type methodKey struct{}

// WithMethod tells the transport what the calls made with the returned
// context invoke, for procedures whose contract is not registered in the
// process (by default it looks the procedure up in the global protobuf
// registry, which importing generated code fills).
func WithMethod(ctx context.Context, m Method) context.Context {
	return context.WithValue(ctx, methodKey{}, m)
}

// methods caches the registry's answer by procedure path.
var methods sync.Map // string -> Method

// methodOf returns what is known of req's procedure: from its context, the
// protobuf registry, or else from the request itself (a Connect unary
// content type or a GET is unary, a GET is idempotent).
func methodOf(req *http.Request) Method {
	if m, ok := req.Context().Value(methodKey{}).(Method); ok {
		return m
	}
	path := req.URL.Path
	if m, ok := methods.Load(path); ok {
		return m.(Method)
	}
	m, registered := lookupMethod(path)
	if registered {
		methods.Store(path, m)
	} else {
		m.Unary = wire.ConnectUnary(req)
	}
	if req.Method == http.MethodGet {
		m.Unary, m.Idempotent, m.ReadOnly = true, true, true
	}
	return m
}

// MethodOf returns what the contract says of procedure
// ("/pkg.Service/Method"), and whether the contract is registered.
func MethodOf(procedure string) (Method, bool) {
	if m, ok := methods.Load(procedure); ok {
		return m.(Method), true
	}
	m, ok := lookupMethod(procedure)
	if ok {
		methods.Store(procedure, m)
	}
	return m, ok
}

func lookupMethod(path string) (Method, bool) {
	service, name, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	if !ok {
		return Method{}, false
	}
	desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(service))
	if err != nil {
		return Method{}, false
	}
	sd, ok := desc.(protoreflect.ServiceDescriptor)
	if !ok {
		return Method{}, false
	}
	md := sd.Methods().ByName(protoreflect.Name(name))
	if md == nil {
		return Method{}, false
	}
	opts, _ := md.Options().(*descriptorpb.MethodOptions)
	level := opts.GetIdempotencyLevel()
	return Method{
		Name:       string(md.FullName()),
		Unary:      !md.IsStreamingClient() && !md.IsStreamingServer(),
		Idempotent: level == descriptorpb.MethodOptions_NO_SIDE_EFFECTS || level == descriptorpb.MethodOptions_IDEMPOTENT,
		ReadOnly:   level == descriptorpb.MethodOptions_NO_SIDE_EFFECTS,
	}, true
}
