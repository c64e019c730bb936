package idem_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
)

// The numbers are stored on disk: they must never change.
func TestStateNumbersAndStrings(t *testing.T) {
	for _, tc := range []struct {
		s   idem.State
		n   uint8
		str string
	}{
		{idem.StateInProgress, 1, "in-progress"},
		{idem.StateCompleted, 2, "completed"},
		{idem.StateFailed, 3, "failed"},
		{idem.State(9), 9, "unknown state: 9"},
	} {
		assert.Equal(t, tc.n, uint8(tc.s))
		assert.Equal(t, tc.str, tc.s.String())
		if tc.n <= 3 {
			got, err := idem.ParseState(tc.str)
			require.NoError(t, err)
			assert.Equal(t, tc.s, got)
		}
	}
	_, err := idem.ParseState("done")
	assert.ErrorContains(t, err, `"done"`)
}
