package auth

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	optionsv1 "github.com/keelplatform/keel/gen/go/keel/options/v1"
)

// Access is who may call a method, as its contract says. The edge
// enforces it on callers from outside, and every service on the calls it
// answers.
type Access uint8

const (
	// LoginRequired: a caller with a valid login token, or one of the
	// platform's own processes. The default, also for a method whose
	// contract the process has no descriptor of.
	LoginRequired Access = iota
	// Public: anyone; (keel.options.v1.method).public.
	Public
	// Internal: the platform's own processes only, never a user;
	// (keel.options.v1.method).internal.
	Internal
)

// AccessOf reads a method's access from its contract options; a nil
// descriptor is [LoginRequired].
func AccessOf(md protoreflect.MethodDescriptor) Access {
	if md == nil {
		return LoginRequired
	}
	opts := md.Options()
	if opts == nil || !proto.HasExtension(opts, optionsv1.E_Method) {
		return LoginRequired
	}
	rules, _ := proto.GetExtension(opts, optionsv1.E_Method).(*optionsv1.MethodRules)
	switch {
	case rules.GetInternal():
		return Internal
	case rules.GetPublic():
		return Public
	}
	return LoginRequired
}
