package idem_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// openBadger opens a store on Badger in a fresh directory.
func openBadger(t *testing.T, opts *idem.Options) *idem.Store {
	t.Helper()
	s, err := idem.Open(t.TempDir(), opts)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

func TestConformanceBadger(t *testing.T) {
	idemtest.Run(t, openBadger)
}

func TestConformanceBadgerInMemory(t *testing.T) {
	idemtest.Run(t, func(t *testing.T, opts *idem.Options) *idem.Store {
		opts.InMemory = true
		s, err := idem.Open("", opts)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, s.Close()) })
		return s
	})
}
