package server

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// noNUL refuses a request message with a NUL character in any string
// field, at any depth, with invalid_argument naming the field. No text
// column can hold NUL (PostgreSQL refuses it outright, and the call would
// end as an internal error in the store), no legitimate text carries one,
// and C libraries cut strings at it: one rule for every Keel service
// rather than a rule on every string field of every contract. Bytes
// fields are not text and are left alone.
type noNUL struct{}

// WrapUnary implements [connect.Interceptor].
func (noNUL) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if m, ok := req.Any().(proto.Message); ok {
			if err := checkNoNUL(m); err != nil {
				return nil, err
			}
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements [connect.Interceptor].
func (noNUL) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements [connect.Interceptor].
func (noNUL) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(ctx, &noNULConn{StreamingHandlerConn: conn})
	}
}

// noNULConn checks every message a stream receives.
type noNULConn struct {
	connect.StreamingHandlerConn
}

func (c *noNULConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	if m, ok := msg.(proto.Message); ok {
		return checkNoNUL(m)
	}
	return nil
}

// checkNoNUL returns invalid_argument naming the first string field of m
// that holds a NUL character, or nil.
func checkNoNUL(m proto.Message) error {
	if path, ok := findNUL(m.ProtoReflect(), ""); ok {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: must not contain a NUL character", path))
	}
	return nil
}

// findNUL returns the path of the first string field in m (under prefix)
// that holds a NUL character.
func findNUL(m protoreflect.Message, prefix string) (path string, found bool) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := prefix + string(fd.Name())
		switch {
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				if path, found = valueNUL(fd, l.Get(i), name+"["+strconv.Itoa(i)+"]"); found {
					return false
				}
			}
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				key := k.String()
				if strings.IndexByte(key, 0) >= 0 {
					path, found = name+" (a key)", true
					return false
				}
				path, found = valueNUL(fd.MapValue(), mv, name+"["+strconv.Quote(key)+"]")
				return !found
			})
			if found {
				return false
			}
		default:
			if path, found = valueNUL(fd, v, name); found {
				return false
			}
		}
		return true
	})
	return path, found
}

// valueNUL checks one value of field fd, a string or a message.
func valueNUL(fd protoreflect.FieldDescriptor, v protoreflect.Value, path string) (string, bool) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return path, strings.IndexByte(v.String(), 0) >= 0
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return findNUL(v.Message(), path+".")
	}
	return "", false
}
