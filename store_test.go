package idem_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemtest"
	"github.com/idemdb/idem/internal/storeinternal"
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

// New refuses the options only the embedded store reads, naming the field,
// rather than accepting them and doing nothing.
func TestNewRefusesEmbeddedOptions(t *testing.T) {
	for name, o := range map[string]*idem.Options{
		"InMemory":     {InMemory: true},
		"Sync":         {Sync: idem.SyncNever},
		"SyncInterval": {SyncInterval: time.Second},
	} {
		kv := openBadger(t, &idem.Options{GCInterval: -1})
		_, err := idem.New(storeinternal.Backend(kv).(idem.Backend), o)
		require.ErrorContains(t, err, "Options."+name, name)
	}
	_, err := idem.New(nil, nil)
	require.ErrorContains(t, err, "nil backend")
}
