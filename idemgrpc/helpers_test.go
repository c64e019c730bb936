package idemgrpc_test

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemgrpc"
	"github.com/idemdb/idem/idemtest"
)

// The test service, defined by hand: no generated code.
const (
	serviceName = "idemgrpc.test.Test"
	// methodSay takes a StringValue and returns a StringValue.
	methodSay = "/" + serviceName + "/Say"
	// methodCharge takes a StringValue and returns a Struct.
	methodCharge = "/" + serviceName + "/Charge"
)

// handler serves every method of the test service: method is the full
// method name.
type handler func(ctx context.Context, method string, in *wrapperspb.StringValue) (proto.Message, error)

func serviceDesc(h handler) *grpc.ServiceDesc {
	method := func(name string) grpc.MethodDesc {
		full := "/" + serviceName + "/" + name
		return grpc.MethodDesc{
			MethodName: name,
			Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
				in := new(wrapperspb.StringValue)
				if err := dec(in); err != nil {
					return nil, err
				}
				run := func(ctx context.Context, req any) (any, error) {
					return h(ctx, full, req.(*wrapperspb.StringValue))
				}
				if ic == nil {
					return run(ctx, in)
				}
				return ic(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: full}, run)
			},
		}
	}
	return &grpc.ServiceDesc{
		ServiceName: serviceName,
		HandlerType: (*any)(nil),
		Methods:     []grpc.MethodDesc{method("Say"), method("Charge")},
	}
}

// env is a real gRPC server on a loopback port, behind the idem
// interceptor on a real embedded store, and a client connection to it.
type env struct {
	store *idem.Store
	clock *idemtest.Clock // the store's clock
	runs  atomic.Int64    // handler runs
	conn  *grpc.ClientConn
	addr  string
}

type envConfig struct {
	store  *idem.Options                 // nil: defaults, GC off, on the env's clock
	opts   *idemgrpc.Options             // the server interceptor's
	outer  []grpc.UnaryServerInterceptor // chained outside the idem interceptor
	client []grpc.UnaryClientInterceptor // the client conn's
	h      handler                       // nil: defaultHandler
	noIdem bool                          // serve without the idem interceptor
}

// defaultHandler answers Say with "said <in>" and Charge with a Struct
// naming the request and the run.
func (e *env) defaultHandler(_ context.Context, method string, in *wrapperspb.StringValue) (proto.Message, error) {
	n := e.runs.Load()
	if method == methodCharge {
		return structpb.NewStruct(map[string]any{"request": in.GetValue(), "run": float64(n), "status": "succeeded"})
	}
	return wrapperspb.String("said " + in.GetValue()), nil
}

func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	e := &env{clock: idemtest.NewClock()}
	so := cfg.store
	if so == nil {
		so = &idem.Options{}
	}
	so.GCInterval = -1
	if so.Now == nil {
		so.Now = e.clock.Now
	}
	if so.Logger == nil {
		so.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := idem.Open(t.TempDir(), so)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	e.store = s

	h := cfg.h
	if h == nil {
		h = e.defaultHandler
	}
	counted := func(ctx context.Context, method string, in *wrapperspb.StringValue) (proto.Message, error) {
		e.runs.Add(1)
		return h(ctx, method, in)
	}
	opts := cfg.opts
	if opts == nil {
		opts = &idemgrpc.Options{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	chain := append([]grpc.UnaryServerInterceptor{}, cfg.outer...)
	if !cfg.noIdem {
		chain = append(chain, idemgrpc.UnaryServerInterceptor(s, opts))
	}
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(chain...))
	srv.RegisterService(serviceDesc(counted), nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	e.addr = ln.Addr().String()

	conn, err := grpc.NewClient(e.addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(cfg.client...))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	e.conn = conn
	return e
}

// result is what a call got back.
type result struct {
	reply  proto.Message
	header metadata.MD
	err    error
}

func (r result) replayed() bool {
	v := r.header.Get(idemgrpc.ReplayedMetadata)
	return len(v) == 1 && v[0] == "true"
}

// call calls method with in and key ("" sends no key), with md added to
// the outgoing metadata.
func (e *env) call(ctx context.Context, method, key, in string, md ...string) result {
	if key != "" {
		md = append(md, idemgrpc.KeyMetadata, key)
	}
	if len(md) > 0 {
		ctx = metadata.AppendToOutgoingContext(ctx, md...)
	}
	var reply proto.Message = new(wrapperspb.StringValue)
	if method == methodCharge {
		reply = new(structpb.Struct)
	}
	var r result
	r.err = e.conn.Invoke(ctx, method, wrapperspb.String(in), reply, grpc.Header(&r.header))
	if r.err == nil {
		r.reply = reply
	}
	return r
}

// requireReason checks that err is the interceptor's error with code and
// reason.
func requireReason(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	require.Error(t, err)
	require.Equal(t, code, status.Code(err), "%v", err)
	require.Equal(t, reason, idemgrpc.Reason(err), "%v", err)
}

// gate blocks handlers until it is opened.
type gate chan struct{}

func (g gate) wait(ctx context.Context) error {
	select {
	case <-g:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
