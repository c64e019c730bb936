package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
)

// TestAdminLoad measures what operators' calls to the admin endpoint cost
// the payments API of idem serve: the API's latency, one payment after
// another, alone and while 16 clients call /admin/stats, or list every
// record through idemadmin's Client, in a loop. It is a measurement, not
// a check, and runs only with IDEM_ADMIN_LOAD=1 (IDEM_ADMIN_LOAD_RECORDS
// sets the store's size, 200000 by default):
//
//	IDEM_ADMIN_LOAD=1 go test -count=1 -run TestAdminLoad -v ./cmd/idem/
func TestAdminLoad(t *testing.T) {
	if os.Getenv("IDEM_ADMIN_LOAD") != "1" {
		t.Skip("a measurement: set IDEM_ADMIN_LOAD=1 to run it")
	}
	records := 200_000
	if v := os.Getenv("IDEM_ADMIN_LOAD_RECORDS"); v != "" {
		var err error
		records, err = strconv.Atoi(v)
		require.NoError(t, err)
	}
	dir := t.TempDir()
	fill(t, dir, records)

	addr, admin := freeAddr(t), freeAddr(t)
	startServe(t, serveConfig{store: &storeFlags{data: dir}, addr: addr, admin: admin})
	const callers = 16
	const window = 4 * time.Second
	for _, load := range []struct {
		name string
		call func(ctx context.Context, c *idemadmin.Client) error
	}{
		{"none", nil},
		{"stats", func(ctx context.Context, c *idemadmin.Client) error {
			_, err := c.Stats(ctx, "")
			return err
		}},
		{"list-all", func(ctx context.Context, c *idemadmin.Client) error {
			return c.List(ctx, idemadmin.Filter{}, func(idemadmin.Record) error { return nil })
		}},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		var mu sync.Mutex
		var calls []time.Duration
		var failed int
		if load.call != nil {
			c := idemadmin.NewClient(admin, &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: callers}})
			for range callers {
				wg.Go(func() {
					for ctx.Err() == nil {
						start := time.Now()
						err := load.call(ctx, c)
						mu.Lock()
						if err == nil {
							calls = append(calls, time.Since(start))
						} else if ctx.Err() == nil {
							failed++
							t.Logf("%s: %v", load.name, err)
						}
						mu.Unlock()
					}
				})
			}
			time.Sleep(500 * time.Millisecond) // let the callers start
		}
		var lat []time.Duration
		hc := &http.Client{}
		for end, i := time.Now().Add(window), 0; time.Now().Before(end); i++ {
			start := time.Now()
			req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/payments", strings.NewReader(`{"amount":5000,"currency":"USD"}`))
			require.NoError(t, err)
			req.Header.Set("Idempotency-Key", fmt.Sprintf("load-%s-%d", load.name, i))
			req.Header.Set("Authorization", "Bearer load")
			resp, err := hc.Do(req)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			require.Equal(t, http.StatusCreated, resp.StatusCode)
			lat = append(lat, time.Since(start))
		}
		cancel()
		wg.Wait()
		t.Logf("%d records, admin load %-8s (%d callers): payments p50 %v p99 %v (%d payments); admin calls done %d, p50 %v, failed %d",
			records, load.name, callers, pct(lat, 50), pct(lat, 99), len(lat), len(calls), pct(calls, 50), failed)
	}
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	return d[(len(d)-1)*p/100].Round(10 * time.Microsecond)
}

// fill writes n completed records into a new store in dir.
func fill(t *testing.T, dir string, n int) {
	t.Helper()
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1, Sync: idem.SyncNever})
	require.NoError(t, err)
	var wg sync.WaitGroup
	const workers = 8
	resp := []byte(strings.Repeat("r", 100))
	for w := range workers {
		wg.Go(func() {
			for i := w; i < n; i += workers {
				l, _, err := s.Begin(ctx, fmt.Sprintf("fill/%08d", i), []byte("fp"))
				if err == nil {
					err = l.Complete(ctx, resp)
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, s.Close())
}
