package server

import (
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestCheckNoNUL(t *testing.T) {
	nested, err := structpb.NewStruct(map[string]any{
		"ok":   "plain",
		"list": []any{"fine", map[string]any{"deep": "a\x00b"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	badKey := &structpb.Struct{Fields: map[string]*structpb.Value{"k\x00": structpb.NewStringValue("v")}}
	for _, tc := range []struct {
		name string
		msg  proto.Message
		path string // "": no NUL
	}{
		{"plain string", wrapperspb.String("hello, world"), ""},
		{"empty", wrapperspb.String(""), ""},
		{"other control characters", wrapperspb.String("tab\there\nnewline"), ""},
		{"NUL", wrapperspb.String("a\x00"), "value"},
		{"bytes may hold NUL", wrapperspb.Bytes([]byte{0, 1, 0}), ""},
		{"deep in a list in a map", nested, `fields["list"].list_value.values[1].struct_value.fields["deep"].string_value`},
		{"a map key", badKey, "fields (a key)"},
	} {
		err := checkNoNUL(tc.msg)
		switch {
		case tc.path == "" && err != nil:
			t.Errorf("%s: %v, want nil", tc.name, err)
		case tc.path != "" && (connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), tc.path+": ")):
			t.Errorf("%s: %v, want invalid_argument naming %s", tc.name, err, tc.path)
		}
	}
}
