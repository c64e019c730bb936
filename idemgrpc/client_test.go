package idemgrpc_test

import (
	"context"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemdb/idem/idemgrpc"
)

// attempts counts the calls that reach the server, outside every other
// interceptor, and the keys they carry.
type attempts struct {
	n    atomic.Int64
	mu   sync.Mutex // protects keys
	keys []string
}

func (a *attempts) intercept(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	a.n.Add(1)
	md, _ := metadata.FromIncomingContext(ctx)
	a.mu.Lock()
	a.keys = append(a.keys, md.Get(idemgrpc.KeyMetadata)...)
	a.mu.Unlock()
	return h(ctx, req)
}

// failFirst returns an interceptor that fails the first call it sees with
// err, after the inner call (the idem interceptor and the handler) ran:
// the reply is lost on the way back.
func failFirst(err error) grpc.UnaryServerInterceptor {
	var calls atomic.Int64
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		reply, herr := h(ctx, req)
		if calls.Add(1) == 1 {
			return nil, err
		}
		return reply, herr
	}
}

// refuse returns an interceptor that answers the first n calls with err
// without running anything inside it; n < 0 means every call.
func refuse(n int64, err error) grpc.UnaryServerInterceptor {
	var calls atomic.Int64
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if c := calls.Add(1); n < 0 || c <= n {
			return nil, err
		}
		return h(ctx, req)
	}
}

func abortedAfter(t *testing.T, d time.Duration) error {
	t.Helper()
	st, err := status.New(codes.Aborted, "busy").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(d)})
	require.NoError(t, err)
	return st.Err()
}

func fastClient(o idemgrpc.ClientOptions) []grpc.UnaryClientInterceptor {
	if o.MinBackoff == 0 {
		o.MinBackoff = time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 20 * time.Millisecond
	}
	return []grpc.UnaryClientInterceptor{idemgrpc.UnaryClientInterceptor(&o)}
}

// TestClientRetriesLostReply: the server ran the call but its reply was
// lost (Unavailable on the way back); the client's retry with the same key
// gets the first reply replayed, and the handler ran once.
func TestClientRetriesLostReply(t *testing.T) {
	var at attempts
	e := newEnv(t, envConfig{
		outer:  []grpc.UnaryServerInterceptor{at.intercept, failFirst(status.Error(codes.Unavailable, "connection reset"))},
		client: fastClient(idemgrpc.ClientOptions{}),
	})
	r := e.call(context.Background(), methodCharge, "", "5000 USD")
	require.NoError(t, r.err)
	require.True(t, r.replayed())
	require.Equal(t, float64(1), r.reply.(*structpb.Struct).GetFields()["run"].GetNumberValue(), "the first run's reply")
	require.Equal(t, int64(1), e.runs.Load())
	require.Equal(t, int64(2), at.n.Load())
	require.Len(t, at.keys, 2)
	require.Equal(t, at.keys[0], at.keys[1], "the retry carries the same key")
	require.Regexp(t, regexp.MustCompile(`^[0-9a-f]{32}$`), at.keys[0], "a fresh 128-bit key")
}

func TestClientKeys(t *testing.T) {
	var at attempts
	e := newEnv(t, envConfig{outer: []grpc.UnaryServerInterceptor{at.intercept}, client: fastClient(idemgrpc.ClientOptions{})})
	ctx := context.Background()
	require.NoError(t, e.call(ctx, methodSay, "", "a").err)
	require.NoError(t, e.call(ctx, methodSay, "", "a").err)
	require.NotEqual(t, at.keys[0], at.keys[1], "a fresh key per call")
	require.Equal(t, int64(2), e.runs.Load())
	r := e.call(ctx, methodSay, "mine", "a")
	require.NoError(t, r.err)
	require.Equal(t, "mine", at.keys[2], "the caller's key is kept")
	require.Len(t, at.keys, 3)
}

func TestClientMaxAttempts(t *testing.T) {
	var at attempts
	e := newEnv(t, envConfig{
		outer:  []grpc.UnaryServerInterceptor{at.intercept, refuse(-1, status.Error(codes.Unavailable, "down"))},
		client: fastClient(idemgrpc.ClientOptions{MaxAttempts: 3}),
	})
	r := e.call(context.Background(), methodSay, "", "a")
	require.Equal(t, codes.Unavailable, status.Code(r.err))
	require.Equal(t, int64(3), at.n.Load())
	require.Equal(t, int64(0), e.runs.Load())
}

// TestClientRetriesOnlyUnavailableAndAborted: other codes, and the
// interceptor's own refusals, are returned at once.
func TestClientRetriesOnlyUnavailableAndAborted(t *testing.T) {
	for _, code := range []codes.Code{codes.FailedPrecondition, codes.InvalidArgument, codes.Internal, codes.ResourceExhausted, codes.DeadlineExceeded} {
		var at attempts
		e := newEnv(t, envConfig{
			outer:  []grpc.UnaryServerInterceptor{at.intercept, refuse(-1, status.Error(code, "no"))},
			client: fastClient(idemgrpc.ClientOptions{}),
		})
		r := e.call(context.Background(), methodSay, "", "a")
		require.Equal(t, code, status.Code(r.err))
		require.Equal(t, int64(1), at.n.Load(), code.String())
	}
	var at attempts
	e := newEnv(t, envConfig{outer: []grpc.UnaryServerInterceptor{at.intercept}, client: fastClient(idemgrpc.ClientOptions{})})
	r := e.call(context.Background(), methodSay, "a b", "a")
	requireReason(t, r.err, codes.InvalidArgument, idemgrpc.ReasonInvalidKey)
	require.Equal(t, int64(1), at.n.Load())
}

// TestClientStopsOnReplayedError: an Aborted stored as the call's outcome
// (a server whose Options.Retryable stores it) comes back marked replayed,
// and the client does not retry it again.
func TestClientStopsOnReplayedError(t *testing.T) {
	var at attempts
	e := newEnv(t, envConfig{
		opts:   &idemgrpc.Options{Retryable: func(codes.Code) bool { return false }},
		outer:  []grpc.UnaryServerInterceptor{at.intercept},
		client: fastClient(idemgrpc.ClientOptions{MaxAttempts: 10}),
		h: func(context.Context, string, *wrapperspb.StringValue) (proto.Message, error) {
			return nil, status.Error(codes.Aborted, "the handler's conflict")
		},
	})
	r := e.call(context.Background(), methodSay, "", "a")
	require.Equal(t, codes.Aborted, status.Code(r.err))
	require.True(t, r.replayed())
	require.Equal(t, int64(2), at.n.Load(), "the first and its replay")
	require.Equal(t, int64(1), e.runs.Load())
}

func TestClientHonoursRetryInfo(t *testing.T) {
	var at attempts
	e := newEnv(t, envConfig{
		outer:  []grpc.UnaryServerInterceptor{at.intercept, refuse(1, abortedAfter(t, 300*time.Millisecond))},
		client: fastClient(idemgrpc.ClientOptions{MaxBackoff: 10 * time.Second}),
	})
	start := time.Now()
	r := e.call(context.Background(), methodSay, "", "a")
	require.NoError(t, r.err)
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond, "waited as RetryInfo asked, not the 1ms backoff")
	require.Equal(t, int64(2), at.n.Load())
}

func TestClientCapsRetryInfo(t *testing.T) {
	var at attempts
	e := newEnv(t, envConfig{
		outer:  []grpc.UnaryServerInterceptor{at.intercept, refuse(1, abortedAfter(t, time.Hour))},
		client: fastClient(idemgrpc.ClientOptions{MaxBackoff: 50 * time.Millisecond}),
	})
	start := time.Now()
	r := e.call(context.Background(), methodSay, "", "a")
	require.NoError(t, r.err)
	require.Less(t, time.Since(start), 10*time.Second, "the hour was capped by MaxBackoff")
	require.Equal(t, int64(2), at.n.Load())
}

// TestClientDeadline: a retry that could not start before the call's
// deadline is not waited for; the last attempt's error is returned.
func TestClientDeadline(t *testing.T) {
	var at attempts
	e := newEnv(t, envConfig{
		outer:  []grpc.UnaryServerInterceptor{at.intercept, refuse(-1, abortedAfter(t, 2*time.Second))},
		client: fastClient(idemgrpc.ClientOptions{MaxAttempts: 100, MaxBackoff: time.Minute}),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := e.call(ctx, methodSay, "", "a")
	require.Equal(t, codes.Aborted, status.Code(r.err))
	require.Less(t, time.Since(start), 400*time.Millisecond, "returned before the deadline")
	require.Equal(t, int64(1), at.n.Load())
}

// TestClientDeadlineStopsRetries: retries go on until the deadline, not
// past it.
func TestClientDeadlineStopsRetries(t *testing.T) {
	var at attempts
	e := newEnv(t, envConfig{
		outer:  []grpc.UnaryServerInterceptor{at.intercept, refuse(-1, abortedAfter(t, 100*time.Millisecond))},
		client: fastClient(idemgrpc.ClientOptions{MaxAttempts: 1000, MaxBackoff: time.Minute}),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 450*time.Millisecond)
	defer cancel()
	start := time.Now()
	r := e.call(ctx, methodSay, "", "a")
	require.Error(t, r.err)
	require.Contains(t, []codes.Code{codes.Aborted, codes.DeadlineExceeded}, status.Code(r.err))
	require.Less(t, time.Since(start), 2*time.Second)
	require.GreaterOrEqual(t, at.n.Load(), int64(2))
	require.LessOrEqual(t, at.n.Load(), int64(5), "about one attempt per 100ms RetryInfo")
}

func TestClientCanceledWhileWaiting(t *testing.T) {
	var at attempts
	e := newEnv(t, envConfig{
		outer:  []grpc.UnaryServerInterceptor{at.intercept, refuse(-1, abortedAfter(t, 5*time.Second))},
		client: fastClient(idemgrpc.ClientOptions{MaxBackoff: time.Minute}),
	})
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	r := e.call(ctx, methodSay, "", "a")
	require.Equal(t, codes.Canceled, status.Code(r.err))
	require.Contains(t, r.err.Error(), "last attempt")
	require.Less(t, time.Since(start), 3*time.Second)
	require.Equal(t, int64(1), at.n.Load())
}

// TestClientWithoutServerInterceptor shows why the client interceptor is
// only for servers that run the server interceptor: against one without
// it, a retry after a lost reply runs the call a second time.
func TestClientWithoutServerInterceptor(t *testing.T) {
	e := newEnv(t, envConfig{
		noIdem: true,
		outer:  []grpc.UnaryServerInterceptor{failFirst(status.Error(codes.Unavailable, "connection reset"))},
		client: fastClient(idemgrpc.ClientOptions{}),
	})
	r := e.call(context.Background(), methodCharge, "", "5000 USD")
	require.NoError(t, r.err)
	require.Equal(t, int64(2), e.runs.Load(), "charged twice")
}
