package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/idemdb/idem/idemgrpc"
)

// TestServeGRPC runs idem serve with -grpc: a charge sent twice with one
// key charges once, and the second call gets the first reply replayed;
// the payment is the HTTP API's too.
func TestServeGRPC(t *testing.T) {
	addr, gaddr := freeAddr(t), freeAddr(t)
	logs, stop := startServe(t, serveConfig{store: &storeFlags{data: t.TempDir()}, addr: addr, grpc: gaddr})
	require.Contains(t, logs.String(), "server=grpc addr="+gaddr)

	conn, err := grpc.NewClient(gaddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	charge := func(key string, fields map[string]any) (*structpb.Struct, metadata.MD, error) {
		in, err := structpb.NewStruct(fields)
		require.NoError(t, err)
		ctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer test")
		if key != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, idemgrpc.KeyMetadata, key)
		}
		out := new(structpb.Struct)
		var header metadata.MD
		err = conn.Invoke(ctx, chargeMethod, in, out, grpc.Header(&header))
		return out, header, err
	}

	first, header, err := charge("order-1", map[string]any{"amount": 5000, "currency": "USD"})
	require.NoError(t, err)
	require.Empty(t, header.Get(idemgrpc.ReplayedMetadata))
	id := first.GetFields()["id"].GetStringValue()
	require.Equal(t, "pay_000001", id)
	// The same request, its fields in another order.
	again, header, err := charge("order-1", map[string]any{"currency": "USD", "amount": 5000})
	require.NoError(t, err)
	require.Equal(t, []string{"true"}, header.Get(idemgrpc.ReplayedMetadata))
	require.True(t, proto.Equal(first, again), "%v != %v", first, again)

	// One charge, which the HTTP API shows.
	code, body := getBody(t, "http://"+addr+"/payments/"+id)
	require.Equal(t, http.StatusOK, code, body)
	require.Contains(t, body, `"amount":5000`)
	code, _ = getBody(t, "http://"+addr+"/payments/pay_000002")
	require.Equal(t, http.StatusNotFound, code)

	// The key reused for another payment, a missing key, and a refused
	// payment (stored and replayed).
	_, _, err = charge("order-1", map[string]any{"amount": 7000, "currency": "USD"})
	require.Equal(t, codes.FailedPrecondition, status.Code(err))
	require.Equal(t, idemgrpc.ReasonKeyReused, idemgrpc.Reason(err))
	_, _, err = charge("", map[string]any{"amount": 5000, "currency": "USD"})
	require.Equal(t, idemgrpc.ReasonKeyRequired, idemgrpc.Reason(err))
	_, _, err = charge("order-2", map[string]any{"amount": -1, "currency": "USD"})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	_, header, err = charge("order-2", map[string]any{"amount": -1, "currency": "USD"})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Contains(t, status.Convert(err).Message(), "not a positive")
	require.Equal(t, []string{"true"}, header.Get(idemgrpc.ReplayedMetadata))

	stop()
	require.Contains(t, logs.String(), "method="+chargeMethod+" code=OK replayed=true")
}

// TestServeGRPCBusy: a gRPC address that is taken is an error naming it,
// and nothing is left listening.
func TestServeGRPCBusy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	addr := freeAddr(t)
	err = serve(context.Background(), serveConfig{store: &storeFlags{data: t.TempDir()}, addr: addr, grpc: ln.Addr().String()}, io.Discard)
	require.ErrorContains(t, err, "grpc: listen tcp "+ln.Addr().String())
	l2, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the API's listener was closed")
	l2.Close()
}
