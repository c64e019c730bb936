package idemgrpc

import (
	"errors"
	"fmt"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
)

// The stored form of a call's outcome, in the record's Response:
//
//	byte 0    the format version, 1
//	byte 1    what follows: kindReply or kindStatus
//	the rest  kindReply: an anypb.Any holding the reply (its type URL
//	          and its encoding); kindStatus: the google.rpc.Status the
//	          handler returned (code, message and details)
//
// The reply's type travels with it in the Any's type URL, because the
// interceptor cannot know a method's reply type without running its
// handler: grpc.UnaryServerInfo names the method, not its messages. A
// replay rebuilds the reply with anypb.UnmarshalNew, from the message
// types linked into the program (protoregistry.GlobalTypes), where every
// generated message type and well-known type registers itself.
const (
	formatV1   = 1
	kindReply  = 'r'
	kindStatus = 's'
)

// errUnstorable is wrapped by encodeReply's errors: the reply cannot be
// stored in a form that a replay could rebuild.
var errUnstorable = errors.New("reply cannot be stored")

// encodeReply returns the stored form of reply.
func encodeReply(reply any) ([]byte, error) {
	m, ok := reply.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%w: %T is not a proto message", errUnstorable, reply)
	}
	a, err := anypb.New(m)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errUnstorable, err)
	}
	// A message type that is not registered (dynamicpb, say) could be
	// stored but not rebuilt: find out now, while the caller still gets
	// the reply, rather than on every replay.
	if _, err := protoregistry.GlobalTypes.FindMessageByURL(a.GetTypeUrl()); err != nil {
		return nil, fmt.Errorf("%w: message type %s is not in the protobuf registry", errUnstorable, a.GetTypeUrl())
	}
	return encode(kindReply, a)
}

// encodeStatus returns the stored form of st.
func encodeStatus(st *status.Status) ([]byte, error) {
	return encode(kindStatus, st.Proto())
}

func encode(kind byte, m proto.Message) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.MarshalAppend([]byte{formatV1, kind}, m)
}

// decode returns the outcome stored in b: a reply, or a status error.
func decode(b []byte) (reply proto.Message, st *status.Status, err error) {
	if len(b) < 2 {
		return nil, nil, fmt.Errorf("stored outcome is %d bytes long", len(b))
	}
	if b[0] != formatV1 {
		return nil, nil, fmt.Errorf("stored outcome has format version %d; this build reads %d", b[0], formatV1)
	}
	switch b[1] {
	case kindReply:
		var a anypb.Any
		if err := proto.Unmarshal(b[2:], &a); err != nil {
			return nil, nil, fmt.Errorf("stored reply: %w", err)
		}
		m, err := anypb.UnmarshalNew(&a, proto.UnmarshalOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("stored reply of type %s: %w", a.GetTypeUrl(), err)
		}
		return m, nil, nil
	case kindStatus:
		var p spb.Status
		if err := proto.Unmarshal(b[2:], &p); err != nil {
			return nil, nil, fmt.Errorf("stored status: %w", err)
		}
		return nil, status.FromProto(&p), nil
	default:
		return nil, nil, fmt.Errorf("stored outcome has unknown kind 0x%02x", b[1])
	}
}
