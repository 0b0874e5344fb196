package edge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/vanguard"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/keelplatform/keel/internal/wire"
)

// front is the edge's handler. A call to a procedure of a routed service
// goes straight to the proxy, so Connect, gRPC and gRPC-Web calls pay one
// map lookup for REST and nothing more; any other request is a REST one
// for the gateway.
type front struct {
	proxy *proxy
	rest  *restGateway
}

func (f *front) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, _, ok := f.proxy.routes.lookup(r.URL.Path); ok || rpcRequest(r) || f.routedService(r.URL.Path) {
		f.proxy.ServeHTTP(w, r)
		return
	}
	f.rest.ServeHTTP(w, r)
}

// routedService reports whether path has the shape of a procedure of a
// routed service: the proxy answers an unknown method of a known service
// as it always has.
func (f *front) routedService(path string) bool {
	service, ok := serviceOf(path)
	if !ok {
		return false
	}
	_, ok = f.proxy.routes.services[service]
	return ok
}

// rpcRequest reports whether r says it is a gRPC, gRPC-Web or Connect
// call, which is never REST whatever its path.
func rpcRequest(r *http.Request) bool {
	ct := r.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc") ||
		strings.HasPrefix(ct, "application/connect+") ||
		r.Header.Get("Connect-Protocol-Version") != ""
}

// restGateway serves the REST routes the routed contracts declare with
// google.api.http annotations (GET /v1/items/{sku}, POST /v1/orders, ...).
// Vanguard's transcoder matches the route, builds the request message from
// the path variables, the query parameters and the JSON body, and turns
// the call into a unary Connect call (binary protobuf) to its procedure.
// That call goes through the proxy like any other: routing, the call
// policy, limits, header rules, metrics and the access log all apply. The
// answer comes back as JSON, and an error as a google.rpc.Status in JSON
// ({"code":5,"message":"…","details":[]}) under the HTTP status Connect
// maps its code to.
type restGateway struct {
	transcoder *vanguard.Transcoder
	proxy      *proxy
}

// newRESTGateway builds the gateway for the routes of table whose
// contracts are registered and declare at least one HTTP rule, forwarding
// through p. It returns nil when no contract has one.
func newRESTGateway(table *routeTable, p *proxy) (*restGateway, error) {
	g := &restGateway{proxy: p}
	names := table.names()
	slices.Sort(names) // route conflicts are reported the same way every time
	var services []*vanguard.Service
	for _, name := range names {
		desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
		if err != nil {
			continue // not a registered contract: procedures pass through unchecked, and there are no routes
		}
		sd, ok := desc.(protoreflect.ServiceDescriptor)
		if !ok || !hasHTTPRules(sd) {
			continue
		}
		services = append(services, vanguard.NewServiceWithSchema(sd, http.HandlerFunc(g.forward)))
	}
	if len(services) == 0 {
		return nil, nil
	}
	limit := uint32(math.MaxUint32)
	if p.maxRequest < math.MaxUint32 {
		limit = uint32(p.maxRequest)
	}
	t, err := vanguard.NewTranscoder(services,
		vanguard.WithCodec(newRESTCodec),
		vanguard.WithUnknownHandler(http.NotFoundHandler()),
		vanguard.WithDefaultServiceOptions(
			vanguard.WithTargetProtocols(vanguard.ProtocolConnect),
			vanguard.WithTargetCodecs(vanguard.CodecProto),
			vanguard.WithNoTargetCompression(),
			// The transcoder holds a whole message, request or answer:
			// a REST body is bounded like any request message.
			vanguard.WithMaxMessageBufferBytes(limit),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("REST routes: %w", err)
	}
	g.transcoder = t
	return g, nil
}

// hasHTTPRules reports whether a method of sd has a google.api.http rule.
func hasHTTPRules(sd protoreflect.ServiceDescriptor) bool {
	for i := range sd.Methods().Len() {
		if proto.HasExtension(sd.Methods().Get(i).Options(), annotations.E_Http) {
			return true
		}
	}
	return false
}

// restCallKey keys the *restCall of a request in its context.
type restCallKey struct{}

func (g *restGateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &restCall{ResponseWriter: w, start: time.Now()}
	method, path := r.Method, r.URL.Path
	jsonContentType(r.Header)
	r = r.WithContext(context.WithValue(r.Context(), restCallKey{}, c))
	g.transcoder.ServeHTTP(c, r)
	if c.forwarded {
		return
	}
	// The request never became a call: the transcoder answered it itself.
	// It is recorded with its own path, unrouted.
	st, httpStatus := c.refusal(method, path)
	writeStatus(w, httpStatus, st)
	r.URL.Path = path
	g.proxy.finish(r, &exchange{start: c.start, rest: true}, connect.Code(st.GetCode()))
}

// forward is the handler of every routed contract behind the transcoder:
// it receives the REST call as a unary Connect call and passes it to the
// proxy.
func (g *restGateway) forward(w http.ResponseWriter, r *http.Request) {
	c := r.Context().Value(restCallKey{}).(*restCall)
	// The transcoder decodes the REST body as it is read. A body it
	// cannot decode (malformed JSON, a field of the wrong type, too
	// large) it answers itself and then ends as if it were empty: read it
	// all before anything goes upstream, and send nothing if it answered.
	rt, _, _ := g.proxy.routes.lookup(r.URL.Path)
	if rt != nil {
		// A malformed timeout is refused by the proxy below.
		timeout, ok, err := wire.ParseTimeout(r.Header)
		if err != nil || !ok {
			timeout = g.proxy.calls.Load().TimeoutFor(rt.logical)
		}
		// A client that sends slowly cannot hold the edge past the call's
		// deadline.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(timeout))
	}
	body, err := io.ReadAll(r.Body)
	if c.status != 0 {
		return
	}
	c.forwarded = true
	x := exchange{start: c.start, rest: true}
	if err != nil {
		g.proxy.fail(w, r, &x, connect.NewError(connect.CodeCanceled, fmt.Errorf("read request: %w", err)))
		return
	}
	r.Body, r.ContentLength = http.NoBody, 0
	if len(body) > 0 {
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	}
	g.proxy.serve(w, r, x)
}

// restCall is one REST request at the edge, and the ResponseWriter the
// transcoder writes to. Until the request is forwarded as a call, what
// the transcoder writes is its own refusal (no such route, a request it
// cannot turn into a call), held back to be rewritten as a REST error;
// once forwarded, the transcoded answer passes through.
type restCall struct {
	http.ResponseWriter
	start     time.Time
	forwarded bool
	status    int          // of the transcoder's own answer; 0 before it writes one
	body      bytes.Buffer // of the transcoder's own answer
}

func (c *restCall) WriteHeader(code int) {
	if c.forwarded {
		c.ResponseWriter.WriteHeader(code)
		return
	}
	if c.status == 0 {
		c.status = code
	}
}

func (c *restCall) Write(p []byte) (int, error) {
	if c.forwarded {
		return c.ResponseWriter.Write(p)
	}
	if c.status == 0 {
		c.status = http.StatusOK
	}
	return c.body.Write(p)
}

// Flush flushes the transcoded answer; the transcoder's own is held.
func (c *restCall) Flush() {
	if c.forwarded {
		_ = http.NewResponseController(c.ResponseWriter).Flush()
	}
}

// Unwrap lets [http.ResponseController] reach the connection.
func (c *restCall) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// refusal turns the transcoder's own answer to a request that never
// became a call into the status the caller gets, and its HTTP status. The
// transcoder refuses the request, not anything upstream: what it reports
// as an unknown or internal error (a query parameter the message does not
// have, a body on a GET) is the caller's invalid_argument.
func (c *restCall) refusal(method, path string) (*status.Status, int) {
	st := new(status.Status)
	httpStatus := c.status
	if err := protojson.Unmarshal(c.body.Bytes(), st); err != nil || st.GetCode() == 0 {
		// A plain-text HTTP error: no route, a method the route does not
		// take, a content type it cannot read.
		st = &status.Status{Message: strings.TrimSpace(c.body.String())}
		switch httpStatus {
		case http.StatusNotFound:
			st.Code = int32(connect.CodeNotFound)
			st.Message = fmt.Sprintf("no route %s %s", method, path)
		case http.StatusMethodNotAllowed:
			// The transcoder lists them in no set order: sort them, so
			// that the same request gets the same answer.
			allowed := strings.Split(c.Header().Get("Allow"), ",")
			slices.Sort(allowed)
			c.Header().Set("Allow", strings.Join(allowed, ","))
			st.Code = int32(connect.CodeUnimplemented)
			st.Message = fmt.Sprintf("%s %s: method not allowed (allowed: %s)", method, path, strings.Join(allowed, ","))
		default:
			st.Code = int32(connect.CodeInvalidArgument)
		}
	}
	if code := connect.Code(st.GetCode()); code == connect.CodeUnknown || code == connect.CodeInternal {
		st.Code = int32(connect.CodeInvalidArgument)
		httpStatus = http.StatusBadRequest
	}
	if httpStatus < 400 {
		httpStatus = http.StatusBadRequest
	}
	return st, httpStatus
}

// writeStatus answers with st as JSON, as the transcoder writes the
// errors of calls.
func writeStatus(w http.ResponseWriter, httpStatus int, st *status.Status) {
	body, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(st)
	if err != nil {
		body = []byte(`{"code":13,"message":"internal error","details":[]}`)
	}
	h := w.Header()
	delete(h, "Content-Length")
	delete(h, "X-Content-Type-Options")
	h["Content-Type"] = []string{"application/json"}
	w.WriteHeader(httpStatus)
	_, _ = w.Write(body)
}

// jsonContentType makes a request body that can only be JSON say so:
// curl -d sends application/x-www-form-urlencoded, and the transcoder
// takes application/json only as spelled exactly.
func jsonContentType(h http.Header) {
	ct, ok := h["Content-Type"]
	if !ok || len(ct) != 1 {
		return
	}
	media, _, err := mime.ParseMediaType(ct[0])
	if err == nil && (media == "application/json" || media == "application/x-www-form-urlencoded") {
		h["Content-Type"] = []string{"application/json"}
	}
}

// restCodec is vanguard's JSON codec, with errors decoding a request that
// are the caller's: invalid_argument naming the problem, not the unknown
// error (HTTP 502) the transcoder makes of a plain error.
type restCodec struct{ *vanguard.JSONCodec }

func newRESTCodec(res vanguard.TypeResolver) vanguard.Codec {
	return restCodec{vanguard.NewJSONCodec(res)}
}

func (c restCodec) Unmarshal(data []byte, msg proto.Message) error {
	return badBody(c.JSONCodec.Unmarshal(data, msg))
}

func (c restCodec) UnmarshalField(data []byte, msg proto.Message, field protoreflect.FieldDescriptor) error {
	return badBody(c.JSONCodec.UnmarshalField(data, msg, field))
}

// badBody is the caller's error for a request body err could not decode.
func badBody(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("unmarshal request body: %w", err))
}

var (
	_ vanguard.RESTCodec  = restCodec{}
	_ http.Flusher        = (*restCall)(nil)
	_ http.ResponseWriter = (*restCall)(nil)
)
