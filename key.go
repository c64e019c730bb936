package idem

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
)

type keyCtx struct{}

// KeyFrom returns the key of the request that ctx runs under, and true:
// the stored key (with its scope, under idemhttp and idemgrpc) of the lease
// whose KeepAlive made ctx, as Do, the middleware and the interceptor pass
// to the code they run. It returns "" and false outside such a request.
func KeyFrom(ctx context.Context) (string, bool) {
	k, ok := ctx.Value(keyCtx{}).(string)
	return k, ok
}

// SubKey returns the idempotency key for the outbound call named name
// (such as "charge-card") made by the request that ctx runs under: a
// digest of the request's key and name, 64 hexadecimal digits, so the same
// for every run of the same request and different for every other request
// and name. A request that runs again after a crash sends its downstream
// calls the same keys, and an idempotent downstream (another service
// behind idem, Stripe) replays them instead of acting twice. Outside a
// request (see KeyFrom) it returns "".
func SubKey(ctx context.Context, name string) string {
	k, ok := KeyFrom(ctx)
	if !ok {
		return ""
	}
	h := sha256.New()
	h.Write([]byte(k))
	h.Write([]byte{0})
	h.Write([]byte(name))
	return hex.EncodeToString(h.Sum(nil))
}
