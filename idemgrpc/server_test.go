package idemgrpc_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemgrpc"
)

func TestReplay(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := context.Background()

	first := e.call(ctx, methodCharge, "k1", "5000 USD")
	require.NoError(t, first.err)
	require.False(t, first.replayed())
	again := e.call(ctx, methodCharge, "k1", "5000 USD")
	require.NoError(t, again.err)
	require.True(t, again.replayed())
	require.IsType(t, &structpb.Struct{}, again.reply)
	require.True(t, proto.Equal(first.reply, again.reply), "%v != %v", first.reply, again.reply)
	require.Equal(t, int64(1), e.runs.Load())

	// Another key is another call.
	other := e.call(ctx, methodCharge, "k2", "5000 USD")
	require.NoError(t, other.err)
	require.False(t, other.replayed())
	require.Equal(t, int64(2), e.runs.Load())

	// A StringValue reply is rebuilt as a StringValue.
	say := e.call(ctx, methodSay, "k3", "hi")
	require.NoError(t, say.err)
	say2 := e.call(ctx, methodSay, "k3", "hi")
	require.NoError(t, say2.err)
	require.True(t, say2.replayed())
	require.Equal(t, "said hi", say2.reply.(*wrapperspb.StringValue).GetValue())
}

// TestConcurrentOneKey: of 50 concurrent calls with one key, one runs the
// handler and 49 get Aborted with RetryInfo while it runs; after it ends,
// all 50 get its reply replayed.
func TestConcurrentOneKey(t *testing.T) {
	g := make(gate)
	var e *env
	e = newEnv(t, envConfig{h: func(ctx context.Context, method string, in *wrapperspb.StringValue) (proto.Message, error) {
		if err := g.wait(ctx); err != nil {
			return nil, err
		}
		return e.defaultHandler(ctx, method, in)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const n = 50
	results := make(chan result, n)
	for range n {
		go func() { results <- e.call(ctx, methodCharge, "one-key", "5000 USD") }()
	}
	var ok []result
	for aborted := 0; aborted+len(ok) < n; {
		r := <-results
		if r.err == nil {
			ok = append(ok, r)
			continue
		}
		requireReason(t, r.err, codes.Aborted, idemgrpc.ReasonInProgress)
		d, has := idemgrpc.RetryDelay(r.err)
		require.True(t, has, "RetryInfo in %v", r.err)
		require.Positive(t, d)
		aborted++
		if aborted == n-1 {
			close(g) // every other call was refused while the first ran
		}
	}
	require.Len(t, ok, 1)
	require.False(t, ok[0].replayed())
	require.Equal(t, int64(1), e.runs.Load())

	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			r := e.call(ctx, methodCharge, "one-key", "5000 USD")
			assert.NoError(t, r.err)
			assert.True(t, r.replayed())
			assert.True(t, proto.Equal(ok[0].reply, r.reply))
		})
	}
	wg.Wait()
	require.Equal(t, int64(1), e.runs.Load())
}

// TestConcurrentClientRetries: 50 concurrent calls with one key through
// the client interceptor all end with the one run's reply.
func TestConcurrentClientRetries(t *testing.T) {
	var e *env
	e = newEnv(t, envConfig{
		store: &idem.Options{Now: time.Now}, // RetryInfo from the running call's real age
		h: func(ctx context.Context, method string, in *wrapperspb.StringValue) (proto.Message, error) {
			time.Sleep(50 * time.Millisecond)
			return e.defaultHandler(ctx, method, in)
		},
		client: []grpc.UnaryClientInterceptor{idemgrpc.UnaryClientInterceptor(&idemgrpc.ClientOptions{MaxAttempts: 50, MinBackoff: time.Millisecond})},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 50
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { results[i] = e.call(ctx, methodCharge, "one-key", "5000 USD") })
	}
	wg.Wait()
	replayed := 0
	for _, r := range results {
		require.NoError(t, r.err)
		require.True(t, proto.Equal(results[0].reply, r.reply))
		if r.replayed() {
			replayed++
		}
	}
	require.Equal(t, n-1, replayed)
	require.Equal(t, int64(1), e.runs.Load())
}

func TestKeyReused(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := context.Background()
	require.NoError(t, e.call(ctx, methodSay, "k", "a").err)

	// Another request with the key.
	r := e.call(ctx, methodSay, "k", "b")
	requireReason(t, r.err, codes.FailedPrecondition, idemgrpc.ReasonKeyReused)
	require.False(t, r.replayed())
	// The same request to another method.
	r = e.call(ctx, methodCharge, "k", "a")
	requireReason(t, r.err, codes.FailedPrecondition, idemgrpc.ReasonKeyReused)
	require.Contains(t, status.Convert(r.err).Message(), methodCharge)
	require.Equal(t, int64(1), e.runs.Load())

	// The first request still replays.
	r = e.call(ctx, methodSay, "k", "a")
	require.NoError(t, r.err)
	require.True(t, r.replayed())
}

// TestStoredError: a handler error with a code that is not retryable is
// stored whole (code, message, details) and replayed; it is the
// handler's, not the interceptor's.
func TestStoredError(t *testing.T) {
	for _, code := range []codes.Code{codes.InvalidArgument, codes.NotFound, codes.AlreadyExists,
		codes.PermissionDenied, codes.FailedPrecondition, codes.OutOfRange, codes.Unimplemented, codes.DataLoss} {
		t.Run(code.String(), func(t *testing.T) {
			e := newEnv(t, envConfig{h: func(context.Context, string, *wrapperspb.StringValue) (proto.Message, error) {
				st, err := status.New(code, "card declined: insufficient funds").WithDetails(
					&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "amount", Description: "too large"}}},
					&errdetails.ErrorInfo{Domain: "payments.example.com", Reason: "DECLINED", Metadata: map[string]string{"b": "2", "a": "1"}})
				require.NoError(t, err)
				return nil, st.Err()
			}})
			ctx := context.Background()
			first := e.call(ctx, methodCharge, "k", "5000 USD")
			require.Equal(t, code, status.Code(first.err))
			require.Empty(t, idemgrpc.Reason(first.err), "the handler's own error")
			require.False(t, first.replayed())

			again := e.call(ctx, methodCharge, "k", "5000 USD")
			require.True(t, again.replayed())
			require.True(t, proto.Equal(status.Convert(first.err).Proto(), status.Convert(again.err).Proto()),
				"%v != %v", status.Convert(first.err).Proto(), status.Convert(again.err).Proto())
			require.Len(t, status.Convert(again.err).Details(), 2)
			require.Empty(t, idemgrpc.Reason(again.err))
			require.Equal(t, int64(1), e.runs.Load())
		})
	}
}

// TestRetryableError: a handler error with a retryable code is not
// stored: the next call with the key runs the handler again.
func TestRetryableError(t *testing.T) {
	errs := map[string]error{"plain error": errors.New("disk on fire"), "context canceled": context.Canceled}
	for _, code := range []codes.Code{codes.Unavailable, codes.ResourceExhausted, codes.Internal, codes.Unknown,
		codes.DeadlineExceeded, codes.Aborted, codes.Canceled, codes.Unauthenticated} {
		errs[code.String()] = status.Error(code, "try again")
	}
	for name, herr := range errs {
		t.Run(name, func(t *testing.T) {
			var e *env
			e = newEnv(t, envConfig{h: func(ctx context.Context, method string, in *wrapperspb.StringValue) (proto.Message, error) {
				if e.runs.Load() == 1 {
					return nil, herr
				}
				return e.defaultHandler(ctx, method, in)
			}})
			ctx := context.Background()
			first := e.call(ctx, methodSay, "k", "a")
			require.Error(t, first.err)
			require.Empty(t, idemgrpc.Reason(first.err))
			second := e.call(ctx, methodSay, "k", "a")
			require.NoError(t, second.err)
			require.False(t, second.replayed())
			require.Equal(t, int64(2), e.runs.Load())
			// The success is stored.
			third := e.call(ctx, methodSay, "k", "a")
			require.NoError(t, third.err)
			require.True(t, third.replayed())
			require.Equal(t, int64(2), e.runs.Load())
		})
	}
}

// TestRetryablePolicy: Options.Retryable replaces the default.
func TestRetryablePolicy(t *testing.T) {
	e := newEnv(t, envConfig{
		opts: &idemgrpc.Options{Retryable: func(c codes.Code) bool { return c == codes.NotFound }},
		h: func(context.Context, string, *wrapperspb.StringValue) (proto.Message, error) {
			return nil, status.Error(codes.NotFound, "not yet")
		},
	})
	ctx := context.Background()
	require.Equal(t, codes.NotFound, status.Code(e.call(ctx, methodSay, "k", "a").err))
	require.False(t, e.call(ctx, methodSay, "k", "a").replayed())
	require.Equal(t, int64(2), e.runs.Load())
}

// recoverPanics turns a handler's panic into codes.Internal, as a
// recovery interceptor does; without one, a panic ends the server.
func recoverPanics(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (reply any, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = status.Errorf(codes.Internal, "panic: %v", p)
		}
	}()
	return h(ctx, req)
}

func TestPanicLeavesKeyRetryable(t *testing.T) {
	var e *env
	e = newEnv(t, envConfig{
		outer: []grpc.UnaryServerInterceptor{recoverPanics},
		h: func(ctx context.Context, method string, in *wrapperspb.StringValue) (proto.Message, error) {
			if e.runs.Load() == 1 {
				panic("boom")
			}
			return e.defaultHandler(ctx, method, in)
		},
	})
	ctx := context.Background()
	first := e.call(ctx, methodSay, "k", "a")
	require.Equal(t, codes.Internal, status.Code(first.err))
	require.Contains(t, first.err.Error(), "panic: boom", "the panic went on past the interceptor")
	second := e.call(ctx, methodSay, "k", "a")
	require.NoError(t, second.err)
	require.False(t, second.replayed())
	require.Equal(t, int64(2), e.runs.Load())
}

func TestInvalidKeys(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := context.Background()
	for name, key := range map[string]string{
		"empty":         "",
		"256 bytes":     strings.Repeat("k", 256),
		"space":         "a b",
		"leading space": " ab",
	} {
		t.Run(name, func(t *testing.T) {
			r := e.call(ctx, methodSay, "", "a", idemgrpc.KeyMetadata, key)
			requireReason(t, r.err, codes.InvalidArgument, idemgrpc.ReasonInvalidKey)
		})
	}
	t.Run("two values", func(t *testing.T) {
		r := e.call(ctx, methodSay, "", "a", idemgrpc.KeyMetadata, "k1", idemgrpc.KeyMetadata, "k2")
		requireReason(t, r.err, codes.InvalidArgument, idemgrpc.ReasonInvalidKey)
	})
	require.Equal(t, int64(0), e.runs.Load())
	t.Run("255 bytes", func(t *testing.T) {
		require.NoError(t, e.call(ctx, methodSay, strings.Repeat("k", 255), "a").err)
	})
}

// TestInvalidKeysDirect calls the interceptor itself with keys a grpc-go
// client refuses to send (it checks metadata values are printable ASCII)
// but other clients may.
func TestInvalidKeysDirect(t *testing.T) {
	e := newEnv(t, envConfig{})
	ic := idemgrpc.UnaryServerInterceptor(e.store, nil)
	info := &grpc.UnaryServerInfo{FullMethod: methodSay}
	for _, key := range []string{"ключ", "a\x00b", "tab\there", "del\x7f", "é"} {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(idemgrpc.KeyMetadata, key))
		_, err := ic(ctx, wrapperspb.String("a"), info, func(context.Context, any) (any, error) {
			t.Fatal("the handler ran")
			return nil, nil
		})
		requireReason(t, err, codes.InvalidArgument, idemgrpc.ReasonInvalidKey)
		require.Contains(t, status.Convert(err).Message(), "not visible ASCII")
	}
}

func TestNoKeyPassesThrough(t *testing.T) {
	e := newEnv(t, envConfig{})
	ctx := context.Background()
	for i := range 3 {
		r := e.call(ctx, methodSay, "", "a")
		require.NoError(t, r.err)
		require.False(t, r.replayed())
		require.Equal(t, int64(i+1), e.runs.Load())
	}
}

func TestRequireKey(t *testing.T) {
	e := newEnv(t, envConfig{opts: &idemgrpc.Options{RequireKey: func(m string) bool { return m == methodCharge }}})
	ctx := context.Background()
	r := e.call(ctx, methodCharge, "", "a")
	requireReason(t, r.err, codes.InvalidArgument, idemgrpc.ReasonKeyRequired)
	require.Equal(t, int64(0), e.runs.Load())
	require.NoError(t, e.call(ctx, methodSay, "", "a").err, "Say needs no key")
	require.NoError(t, e.call(ctx, methodCharge, "k", "a").err)
	require.Equal(t, int64(2), e.runs.Load())
}

func TestStoreClosed(t *testing.T) {
	e := newEnv(t, envConfig{})
	require.NoError(t, e.store.Close())
	r := e.call(context.Background(), methodCharge, "k", "a")
	requireReason(t, r.err, codes.Unavailable, idemgrpc.ReasonStoreUnavailable)
	require.Equal(t, int64(0), e.runs.Load())
	// Without a key, the store is not asked.
	require.NoError(t, e.call(context.Background(), methodCharge, "", "a").err)
}

// TestInProgressRetryInfo: a call whose key is running gets Aborted with a
// RetryInfo of as long as the first has run, at most until its lease
// lapses, at least 100ms; by the store's clock.
func TestInProgressRetryInfo(t *testing.T) {
	g := make(gate)
	started := make(chan struct{})
	var e *env
	e = newEnv(t, envConfig{h: func(ctx context.Context, method string, in *wrapperspb.StringValue) (proto.Message, error) {
		close(started)
		if err := g.wait(ctx); err != nil {
			return nil, err
		}
		return e.defaultHandler(ctx, method, in)
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan result, 1)
	go func() { done <- e.call(ctx, methodSay, "k", "a") }()
	<-started

	retry := func() time.Duration {
		t.Helper()
		r := e.call(ctx, methodSay, "k", "a")
		requireReason(t, r.err, codes.Aborted, idemgrpc.ReasonInProgress)
		info := findDetail[*errdetails.ErrorInfo](t, r.err)
		require.Equal(t, idemgrpc.ErrorDomain, info.GetDomain())
		d, ok := idemgrpc.RetryDelay(r.err)
		require.True(t, ok)
		return d
	}
	require.Equal(t, 100*time.Millisecond, retry(), "just started: the floor")
	e.clock.Advance(3 * time.Second)
	require.Equal(t, 3*time.Second, retry(), "as long as it has run")
	e.clock.Advance(24 * time.Second) // 27s in; the 30s lease has 3s left
	require.Equal(t, 3*time.Second, retry(), "until the lease lapses")

	close(g)
	r := <-done
	require.NoError(t, r.err)
	require.Equal(t, int64(1), e.runs.Load())
}

func findDetail[T any](t *testing.T, err error) T {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if v, ok := d.(T); ok {
			return v
		}
	}
	var zero T
	t.Fatalf("no %T in %v", zero, err)
	return zero
}

// TestErrorInfo: every error the interceptor makes carries an ErrorInfo of
// its domain; the handler's own errors of the same codes do not.
func TestErrorInfo(t *testing.T) {
	e := newEnv(t, envConfig{
		opts: &idemgrpc.Options{RequireKey: func(string) bool { return true }},
		h: func(_ context.Context, _ string, in *wrapperspb.StringValue) (proto.Message, error) {
			switch in.GetValue() {
			case "precondition":
				return nil, status.Error(codes.FailedPrecondition, "the handler's own")
			case "aborted":
				return nil, status.Error(codes.Aborted, "the handler's own")
			}
			return wrapperspb.String("ok"), nil
		},
	})
	ctx := context.Background()
	require.NoError(t, e.call(ctx, methodSay, "k", "a").err)
	for _, c := range []struct {
		err    error
		code   codes.Code
		reason string
	}{
		{e.call(ctx, methodSay, "", "a").err, codes.InvalidArgument, idemgrpc.ReasonKeyRequired},
		{e.call(ctx, methodSay, strings.Repeat("x", 300), "a").err, codes.InvalidArgument, idemgrpc.ReasonInvalidKey},
		{e.call(ctx, methodSay, "k", "b").err, codes.FailedPrecondition, idemgrpc.ReasonKeyReused},
		{e.call(ctx, methodSay, "k2", "precondition").err, codes.FailedPrecondition, ""},
		{e.call(ctx, methodSay, "k3", "aborted").err, codes.Aborted, ""},
	} {
		require.Equal(t, c.code, status.Code(c.err), "%v", c.err)
		require.Equal(t, c.reason, idemgrpc.Reason(c.err), "%v", c.err)
		if c.reason != "" {
			info := findDetail[*errdetails.ErrorInfo](t, c.err)
			require.Equal(t, idemgrpc.ErrorDomain, info.GetDomain())
		}
	}
}

// TestLeaseLostReplaysNewer: a holder whose lease lapsed and was taken
// over does not hand its stale reply to its caller: the newer holder's
// stored reply is replayed instead.
func TestLeaseLostReplaysNewer(t *testing.T) {
	g := make(gate)
	started := make(chan struct{}, 2)
	var e *env
	e = newEnv(t, envConfig{h: func(ctx context.Context, method string, in *wrapperspb.StringValue) (proto.Message, error) {
		run := e.runs.Load()
		started <- struct{}{}
		if run == 1 {
			<-g // ignores ctx: the stale holder finishes anyway
		}
		return wrapperspb.String(map[int64]string{1: "stale", 2: "newer"}[run]), nil
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := make(chan result, 1)
	go func() { done <- e.call(ctx, methodSay, "k", "a") }()
	<-started
	e.clock.Advance(31 * time.Second) // the first lease lapses
	second := e.call(ctx, methodSay, "k", "a")
	require.NoError(t, second.err)
	require.Equal(t, "newer", second.reply.(*wrapperspb.StringValue).GetValue())
	require.False(t, second.replayed())

	close(g)
	first := <-done
	require.NoError(t, first.err)
	require.Equal(t, "newer", first.reply.(*wrapperspb.StringValue).GetValue(), "never the stale answer")
	require.True(t, first.replayed())
	require.Equal(t, int64(2), e.runs.Load())
}

// TestLeaseLostInProgress: when the newer holder still runs, the stale one
// answers Aborted with RetryInfo.
func TestLeaseLostInProgress(t *testing.T) {
	gates := []gate{make(gate), make(gate)}
	started := make(chan struct{}, 2)
	var e *env
	e = newEnv(t, envConfig{h: func(_ context.Context, _ string, in *wrapperspb.StringValue) (proto.Message, error) {
		run := e.runs.Load()
		started <- struct{}{}
		<-gates[run-1]
		return wrapperspb.String(map[int64]string{1: "stale", 2: "newer"}[run]), nil
	}})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := []chan result{make(chan result, 1), make(chan result, 1)}
	go func() { done[0] <- e.call(ctx, methodSay, "k", "a") }()
	<-started
	e.clock.Advance(31 * time.Second)
	go func() { done[1] <- e.call(ctx, methodSay, "k", "a") }()
	<-started

	close(gates[0])
	first := <-done[0]
	requireReason(t, first.err, codes.Aborted, idemgrpc.ReasonInProgress)
	_, ok := idemgrpc.RetryDelay(first.err)
	require.True(t, ok)

	close(gates[1])
	second := <-done[1]
	require.NoError(t, second.err)
	require.Equal(t, "newer", second.reply.(*wrapperspb.StringValue).GetValue())
}

// TestLeaseLostDeleted: when the record is gone, the stale holder answers
// Aborted with LEASE_LOST rather than its reply.
func TestLeaseLostDeleted(t *testing.T) {
	g := make(gate)
	started := make(chan struct{})
	e := newEnv(t, envConfig{h: func(context.Context, string, *wrapperspb.StringValue) (proto.Message, error) {
		close(started)
		<-g
		return wrapperspb.String("stale"), nil
	}})
	ctx := context.Background()
	done := make(chan result, 1)
	go func() { done <- e.call(ctx, methodSay, "k", "a") }()
	<-started
	// The stored key of key "k" with the empty scope (storedKey).
	require.NoError(t, e.store.Delete(ctx, "idemgrpc:0::k"))
	close(g)
	r := <-done
	requireReason(t, r.err, codes.Aborted, idemgrpc.ReasonLeaseLost)
}

func TestScope(t *testing.T) {
	e := newEnv(t, envConfig{opts: &idemgrpc.Options{Scope: func(ctx context.Context) string {
		md, _ := metadata.FromIncomingContext(ctx)
		return strings.Join(md.Get("tenant"), ",")
	}}})
	ctx := context.Background()
	a := e.call(ctx, methodCharge, "k", "x", "tenant", "a")
	require.NoError(t, a.err)
	b := e.call(ctx, methodCharge, "k", "x", "tenant", "b")
	require.NoError(t, b.err)
	require.False(t, b.replayed(), "another tenant's key is another call")
	require.False(t, proto.Equal(a.reply, b.reply))
	a2 := e.call(ctx, methodCharge, "k", "x", "tenant", "a")
	require.True(t, a2.replayed())
	require.True(t, proto.Equal(a.reply, a2.reply))
	require.Equal(t, int64(2), e.runs.Load())
}

// TestTTL: Options.TTL keeps a method's outcomes longer than the store's
// default; expiry is by the store's clock.
func TestTTL(t *testing.T) {
	e := newEnv(t, envConfig{opts: &idemgrpc.Options{TTL: func(_ context.Context, m string) time.Duration {
		if m == methodCharge {
			return 7 * 24 * time.Hour
		}
		return 0
	}}})
	ctx := context.Background()
	require.NoError(t, e.call(ctx, methodCharge, "k1", "a").err)
	require.NoError(t, e.call(ctx, methodSay, "k2", "a").err)
	e.clock.Advance(25 * time.Hour)
	require.True(t, e.call(ctx, methodCharge, "k1", "a").replayed(), "kept 7 days")
	require.False(t, e.call(ctx, methodSay, "k2", "a").replayed(), "the store's 24h")
	require.Equal(t, int64(3), e.runs.Load())
}

// TestNotStored: a reply too large for the store reaches its caller, and
// retries get NOT_STORED instead of a second run.
func TestNotStored(t *testing.T) {
	e := newEnv(t, envConfig{
		store: &idem.Options{MaxResponseSize: 1000},
		h: func(_ context.Context, _ string, in *wrapperspb.StringValue) (proto.Message, error) {
			return wrapperspb.String(strings.Repeat("x", 2000)), nil
		},
	})
	ctx := context.Background()
	first := e.call(ctx, methodSay, "k", "a")
	require.NoError(t, first.err)
	require.Len(t, first.reply.(*wrapperspb.StringValue).GetValue(), 2000)
	again := e.call(ctx, methodSay, "k", "a")
	requireReason(t, again.err, codes.FailedPrecondition, idemgrpc.ReasonNotStored)
	require.True(t, again.replayed())
	require.Equal(t, int64(1), e.runs.Load())
}

func TestFingerprint(t *testing.T) {
	a, err := structpb.NewStruct(map[string]any{"amount": 5000, "currency": "USD", "meta": map[string]any{"x": 1, "y": 2}})
	require.NoError(t, err)
	b, err := structpb.NewStruct(map[string]any{"meta": map[string]any{"y": 2, "x": 1}, "currency": "USD", "amount": 5000})
	require.NoError(t, err)
	fa, err := idemgrpc.Fingerprint(methodCharge, a)
	require.NoError(t, err)
	fb, err := idemgrpc.Fingerprint(methodCharge, b)
	require.NoError(t, err)
	require.Equal(t, fa, fb, "map order does not count")
	require.Len(t, fa, 32)
	fc, err := idemgrpc.Fingerprint(methodSay, a)
	require.NoError(t, err)
	require.NotEqual(t, fa, fc, "the method counts")
}

// TestFingerprintOption: a replaced fingerprint decides what a retry is.
func TestFingerprintOption(t *testing.T) {
	e := newEnv(t, envConfig{opts: &idemgrpc.Options{Fingerprint: func(m string, req any) ([]byte, error) {
		v := req.(*wrapperspb.StringValue).GetValue()
		if v == "bad" {
			return nil, errors.New("cannot")
		}
		return []byte(m + strings.ToLower(v)), nil
	}}})
	ctx := context.Background()
	require.NoError(t, e.call(ctx, methodSay, "k", "abc").err)
	r := e.call(ctx, methodSay, "k", "ABC")
	require.NoError(t, r.err)
	require.True(t, r.replayed())
	r = e.call(ctx, methodSay, "k2", "bad")
	requireReason(t, r.err, codes.Internal, idemgrpc.ReasonFingerprintFailed)
	r = e.call(ctx, methodSay, "k3", strings.Repeat("x", idem.MaxFingerprintSize+1))
	requireReason(t, r.err, codes.Internal, idemgrpc.ReasonFingerprintFailed)
	require.Equal(t, int64(1), e.runs.Load())
}

func TestOptionsPanic(t *testing.T) {
	require.Panics(t, func() { idemgrpc.UnaryServerInterceptor(nil, nil) })
	s, err := idem.Open("", &idem.Options{InMemory: true, GCInterval: -1})
	require.NoError(t, err)
	defer s.Close()
	require.Panics(t, func() { idemgrpc.UnaryServerInterceptor(s, &idemgrpc.Options{LeaseTTL: -time.Second}) })
	require.NotPanics(t, func() { idemgrpc.UnaryServerInterceptor(s, nil) })
	small, err := idem.Open("", &idem.Options{InMemory: true, GCInterval: -1, MaxKeySize: 40})
	require.NoError(t, err)
	defer small.Close()
	require.Panics(t, func() { idemgrpc.UnaryServerInterceptor(small, nil) })

	require.Panics(t, func() { idemgrpc.UnaryClientInterceptor(&idemgrpc.ClientOptions{MaxAttempts: -1}) })
	require.Panics(t, func() {
		idemgrpc.UnaryClientInterceptor(&idemgrpc.ClientOptions{MinBackoff: time.Second, MaxBackoff: time.Millisecond})
	})
	require.NotPanics(t, func() { idemgrpc.UnaryClientInterceptor(nil) })
}

// TestUnregisteredReplyType: a reply whose message type is not in the
// protobuf registry could not be rebuilt on replay, so it is handled as
// an outcome that cannot be stored: the first caller gets it, retries get
// NOT_STORED, and the handler runs once.
func TestUnregisteredReplyType(t *testing.T) {
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name:    proto.String("idemgrpc_unregistered.proto"),
		Package: proto.String("idemgrpc.unregistered"),
		Syntax:  proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Reply"),
			Field: []*descriptorpb.FieldDescriptorProto{{
				Name: proto.String("text"), Number: proto.Int32(1), JsonName: proto.String("text"),
				Type:  descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(),
				Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
			}},
		}},
	}, nil)
	require.NoError(t, err)
	md := fd.Messages().Get(0)

	e := newEnv(t, envConfig{})
	ic := idemgrpc.UnaryServerInterceptor(e.store, &idemgrpc.Options{Logger: slog.New(slog.DiscardHandler)})
	info := &grpc.UnaryServerInfo{FullMethod: methodSay}
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(idemgrpc.KeyMetadata, "k"))
	runs := 0
	h := func(context.Context, any) (any, error) {
		runs++
		m := dynamicpb.NewMessage(md)
		m.Set(md.Fields().Get(0), protoreflect.ValueOfString("hello"))
		return m, nil
	}
	reply, err := ic(ctx, wrapperspb.String("a"), info, h)
	require.NoError(t, err)
	require.Equal(t, "hello", reply.(*dynamicpb.Message).Get(md.Fields().Get(0)).String())
	_, err = ic(ctx, wrapperspb.String("a"), info, h)
	requireReason(t, err, codes.FailedPrecondition, idemgrpc.ReasonNotStored)
	require.Contains(t, status.Convert(err).Message(), "not in the protobuf registry")
	require.Equal(t, 1, runs)
}
