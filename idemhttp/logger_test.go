package idemhttp_test

import (
	"bytes"
	"log/slog"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem/idemhttp"
)

// A nil Options.Logger is silent, as a nil idem.Options.Logger is: nothing
// reaches slog.Default. A Logger that is set gets the line.
func TestNilLoggerIsSilent(t *testing.T) {
	var global bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&global, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })

	s := openStore(t, nil)
	require.NoError(t, s.Close())
	h := idemhttp.New(s, nil)(&charge{})
	requireRecProblem(t, serve(h, post("/payments", "k", "a")), http.StatusServiceUnavailable, idemhttp.ProblemStoreUnavailable)
	require.Empty(t, global.String(), "a nil Logger wrote to slog.Default")

	var own bytes.Buffer
	h = idemhttp.New(s, &idemhttp.Options{Logger: slog.New(slog.NewTextHandler(&own, nil))})(&charge{})
	requireRecProblem(t, serve(h, post("/payments", "k", "a")), http.StatusServiceUnavailable, idemhttp.ProblemStoreUnavailable)
	require.Contains(t, own.String(), "idemhttp: store unavailable")
	require.Empty(t, global.String())
}
