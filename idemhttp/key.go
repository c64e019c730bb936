package idemhttp

import (
	"errors"
	"fmt"
	"strings"

	"github.com/idemdb/idem/internal/scoped"
)

// MaxKeyLen is the longest idempotency key accepted, in bytes, as the
// Idempotency-Key draft recommends.
const MaxKeyLen = 255

// ErrMalformedKey is returned by ParseKey for a header value that is not an
// idempotency key. The error returned wraps it and says what was wrong.
var ErrMalformedKey = errors.New("malformed idempotency key")

// ParseKey returns the idempotency key in an Idempotency-Key header value.
// It accepts the draft's form, a Structured Field string (RFC 8941:
// `"8e03978e-40d5-43e8-bc93-6894a57f9324"`, with `\"` and `\\` escapes),
// and a bare token (`8e03978e-40d5-43e8-bc93-6894a57f9324`). Surrounding
// spaces and tabs are ignored. The key itself must be 1 to MaxKeyLen bytes
// of visible ASCII (0x21 to 0x7e); a bare token may not hold `"` or `,`
// (a comma means several values were sent).
//
// A quoted key may carry Structured Field parameters (`"k";v=1`), as every
// Structured Field item may: they are checked against RFC 8941 (and the
// Date and Display String items of RFC 9651) and ignored, so `"k";v=1` is
// the key "k". A bare token is taken whole, parameters or not: `k;v=1` is
// the key "k;v=1", as it always was, so that keys already stored keep
// their meaning.
func ParseKey(value string) (string, error) {
	v := strings.Trim(value, " \t")
	if v == "" {
		return "", fmt.Errorf("%w: empty", ErrMalformedKey)
	}
	var key string
	if v[0] == '"' {
		k, rest, err := parseSFString(v)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrMalformedKey, err)
		}
		if err := checkParams(rest); err != nil {
			return "", fmt.Errorf("%w: %v", ErrMalformedKey, err)
		}
		key = k
	} else {
		for i := 0; i < len(v); i++ {
			switch v[i] {
			case '"':
				return "", fmt.Errorf("%w: unbalanced quote at byte %d", ErrMalformedKey, i)
			case ',':
				return "", fmt.Errorf("%w: more than one value (comma at byte %d)", ErrMalformedKey, i)
			}
		}
		key = v
	}
	if err := checkKey(key); err != nil {
		return "", err
	}
	return key, nil
}

// checkKey reports whether key is 1 to MaxKeyLen bytes of visible ASCII.
func checkKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty", ErrMalformedKey)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: %d bytes, longer than %d", ErrMalformedKey, len(key), MaxKeyLen)
	}
	for i := 0; i < len(key); i++ {
		if c := key[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: byte 0x%02x at %d is not visible ASCII", ErrMalformedKey, c, i)
		}
	}
	return nil
}

// FormatKey returns key as an Idempotency-Key header value: a Structured
// Field string, quoted, with `"` and `\` escaped, as the draft asks
// clients to send it. ParseKey(FormatKey(k)) is k for every valid key.
func FormatKey(key string) string {
	var b strings.Builder
	b.Grow(len(key) + 2)
	b.WriteByte('"')
	for i := 0; i < len(key); i++ {
		if c := key[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(key[i])
	}
	b.WriteByte('"')
	return b.String()
}

// storedKey returns the key under which the outcome for key is stored
// for scope: see scoped.Key.
func storedKey(scope, key string, maxKeySize int) string {
	return scoped.Key("idemhttp", scope, key, maxKeySize)
}

// minStoreKeySize is the smallest store MaxKeySize the middleware works
// with: room for a digest key.
var minStoreKeySize = scoped.MinStoreKeySize("idemhttp")
