package idemadmin_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
)

// A record survives the exchange form exactly, an empty response (kept
// apart from a missing one) included.
func TestRecordRoundTrip(t *testing.T) {
	now := time.Unix(1_800_000_000, 123456789)
	for _, resp := range [][]byte{nil, {}, []byte("charge ch_1"), {0, 0xff, '\n'}} {
		in := &idem.Record{Key: "tenant/k", State: idem.StateCompleted, Fingerprint: []byte{1, 2, 3}, Response: resp,
			Attempts: 2, Token: 77, CreatedAt: now, UpdatedAt: now.Add(time.Second), ExpiresAt: now.Add(24 * time.Hour)}
		b, err := json.Marshal(idemadmin.FromRecord(in))
		require.NoError(t, err)
		var j idemadmin.Record
		require.NoError(t, json.Unmarshal(b, &j), string(b))
		out, err := j.ToRecord()
		require.NoError(t, err)
		assert.Equal(t, resp == nil, out.Response == nil, "nil stays nil, empty stays empty: %s", b)
		assert.Equal(t, string(resp), string(out.Response))
		assert.Equal(t, in.Token, out.Token)
		assert.True(t, in.CreatedAt.Equal(out.CreatedAt))
		assert.True(t, in.ExpiresAt.Equal(out.ExpiresAt))
		assert.Equal(t, in.Fingerprint, out.Fingerprint)
	}
}
