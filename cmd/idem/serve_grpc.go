package main

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemgrpc"
	"github.com/idemdb/idem/internal/payments"
)

// The payments API over gRPC (idem serve -grpc): one method, Charge,
// taking a google.protobuf.Struct {"amount": cents, "currency": "USD"}
// and returning the payment as a Struct, behind the idemgrpc interceptor
// on the store the HTTP API uses. The service is described by hand
// (grpc.ServiceDesc), so it needs no generated code; a client calls it
// with conn.Invoke(ctx, chargeMethod, req, reply).
const (
	paymentsService = "idem.payments.v1.Payments"
	chargeMethod    = "/" + paymentsService + "/Charge"
)

// paymentsServer is what serves paymentsDesc.
type paymentsServer interface {
	chargeGRPC(ctx context.Context, in *structpb.Struct) (*structpb.Struct, error)
}

var paymentsDesc = grpc.ServiceDesc{
	ServiceName: paymentsService,
	HandlerType: (*paymentsServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Charge",
		Handler: func(srv any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			in := new(structpb.Struct)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, req any) (any, error) {
				return srv.(paymentsServer).chargeGRPC(ctx, req.(*structpb.Struct))
			}
			if ic == nil {
				return h(ctx, in)
			}
			return ic(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: chargeMethod}, h)
		},
	}},
}

// newGRPCServer returns the gRPC server of idem serve -grpc: api's
// payments behind the idempotency interceptor on s, with call logging.
func newGRPCServer(s *idem.Store, api *payments.API, log *slog.Logger) grpcServer {
	srv := grpc.NewServer(grpc.ChainUnaryInterceptor(
		logCalls(log),
		idemgrpc.UnaryServerInterceptor(s, &idemgrpc.Options{
			// Charging without a key cannot be retried safely.
			RequireKey: func(string) bool { return true },
			Scope:      grpcPrincipal,
			TTL:        func(context.Context, string) time.Duration { return payments.TTL },
			Logger:     log,
		}),
	))
	srv.RegisterService(&paymentsDesc, grpcPayments{api})
	return grpcServer{srv}
}

// grpcServer gives a *grpc.Server the Serve and Shutdown of an
// *http.Server, so that idem serve runs and stops it with the others.
type grpcServer struct{ *grpc.Server }

// Serve serves on ln until Shutdown, and then returns
// http.ErrServerClosed, as an http.Server does.
func (g grpcServer) Serve(ln net.Listener) error {
	if err := g.Server.Serve(ln); err != nil {
		return err
	}
	return http.ErrServerClosed
}

// Shutdown stops g gracefully, letting calls in flight finish, or at once
// when ctx ends first.
func (g grpcServer) Shutdown(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		g.Stop()
		<-done
		return ctx.Err()
	}
}

// grpcPrincipal scopes idempotency keys by the caller's credentials, as
// the HTTP API does: a digest of the authorization metadata.
func grpcPrincipal(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if auth := md.Get("authorization"); len(auth) > 0 {
		return payments.Scope(auth[0])
	}
	return ""
}

// grpcPayments serves paymentsDesc with the payments API.
type grpcPayments struct{ api *payments.API }

// chargeGRPC makes a payment: the gRPC twin of POST /payments.
func (g grpcPayments) chargeGRPC(ctx context.Context, in *structpb.Struct) (*structpb.Struct, error) {
	const usage = `the request must be a Struct {"amount": cents, "currency": "USD"}`
	var amount float64
	var currency string
	for name, v := range in.GetFields() {
		switch name {
		case "amount":
			n, ok := v.GetKind().(*structpb.Value_NumberValue)
			if !ok {
				return nil, status.Errorf(codes.InvalidArgument, "%s: amount is not a number", usage)
			}
			amount = n.NumberValue
		case "currency":
			s, ok := v.GetKind().(*structpb.Value_StringValue)
			if !ok {
				return nil, status.Errorf(codes.InvalidArgument, "%s: currency is not a string", usage)
			}
			currency = s.StringValue
		default:
			return nil, status.Errorf(codes.InvalidArgument, "%s: unknown field %q", usage, name)
		}
	}
	if amount <= 0 || amount != math.Trunc(amount) || amount > 1<<53 {
		return nil, status.Errorf(codes.InvalidArgument, "amount %v is not a positive whole number of cents", amount)
	}
	p, err := g.api.Charge(ctx, int64(amount), currency)
	switch {
	case errors.Is(err, payments.ErrInvalid):
		return nil, status.Error(codes.InvalidArgument, err.Error())
	case err != nil:
		// Retryable: nothing was charged.
		return nil, status.Error(codes.Unavailable, "the call was canceled before the charge")
	}
	return structpb.NewStruct(map[string]any{
		"id":       p.ID,
		"amount":   float64(p.Amount),
		"currency": p.Currency,
		"status":   p.Status,
		"created":  p.Created.Format(time.RFC3339Nano),
	})
}

// logCalls logs one line per call, saying whether it was replayed.
func logCalls(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		spy := &replayedSpy{ServerTransportStream: grpc.ServerTransportStreamFromContext(ctx)}
		if spy.ServerTransportStream != nil {
			ctx = grpc.NewContextWithServerTransportStream(ctx, spy)
		}
		reply, err := h(ctx, req)
		log.Info("call", "method", info.FullMethod, "code", status.Code(err).String(),
			"replayed", spy.replayed, "duration", time.Since(start).String())
		return reply, err
	}
}

// replayedSpy notes the idempotent-replayed header set through it.
type replayedSpy struct {
	grpc.ServerTransportStream
	replayed bool
}

func (s *replayedSpy) SetHeader(md metadata.MD) error {
	s.note(md)
	return s.ServerTransportStream.SetHeader(md)
}

func (s *replayedSpy) SendHeader(md metadata.MD) error {
	s.note(md)
	return s.ServerTransportStream.SendHeader(md)
}

func (s *replayedSpy) note(md metadata.MD) {
	if v := md.Get(idemgrpc.ReplayedMetadata); len(v) > 0 && v[0] == "true" {
		s.replayed = true
	}
}
