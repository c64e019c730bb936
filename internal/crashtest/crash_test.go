package crashtest_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/idemdb/idem"
)

// An embedded store with the side effect outside it: the handler's charge
// is on disk before the middleware completes the key, so a kill between
// the two makes the client's retry charge again. The test counts those
// duplicates and does not expect zero; what it does require is that every
// payment charged at least once, that the charge the client was told of
// happened, and that every acknowledged payment is completed in the store
// and replayed exactly as the client got it.
func TestCrashEffectOutsideStore(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	kills := killsFromEnv(t)
	svc := newService(t, rolePay, filepath.Join(t.TempDir(), rolePay))
	res := runLoad(t, svc, kills)
	checkReplays(t, svc, res)
	reruns := svc.stderrCount("lease taken over")
	svc.kill()
	svc.checkStderr()
	svc.logOther("lease taken over")

	effects := readEffects(t, svc.path("effects.log"))
	var missing, foreign, dups []string
	total, extra := 0, 0
	for o, a := range res.acks {
		effs := effects[o]
		if len(effs) == 0 {
			missing = append(missing, o)
			continue
		}
		if len(effs) > 1 {
			dups = append(dups, o)
			extra += len(effs) - 1
		}
		if !slices.ContainsFunc(effs, func(e effect) bool { return e.charge == a.receipt.Charge }) {
			t.Errorf("payment %s: the client was told of charge %s, which no effect made (effects: %v)", o, a.receipt.Charge, effs)
		}
	}
	for o, effs := range effects {
		total += len(effs)
		if _, ok := res.acks[o]; !ok {
			foreign = append(foreign, o)
		}
	}
	assert.Empty(t, missing, "acknowledged payments that never charged")
	assert.Empty(t, foreign, "charges for payments no client acknowledged")
	checkCompleted(t, svc.path("store"), res, effects)

	sort.Strings(dups)
	t.Logf("embedded store, effect outside it: %d kills, %d payments, %d effects, %d payments charged more than once (%d extra charges), %d leases taken over after a kill, %d client retries",
		kills, len(res.acks), total, len(dups), extra, reruns, res.retries)
	if len(dups) > 0 {
		t.Logf("charged more than once, e.g. %s: %v", dups[0], effects[dups[0]])
	}
}

// checkCompleted opens the store in dir and checks that the key under
// which each acknowledged payment charged holds a completed record.
func checkCompleted(t *testing.T, dir string, res loadResult, effects map[string][]effect) {
	t.Helper()
	s, err := idem.Open(dir, &idem.Options{GCInterval: -1})
	require.NoError(t, err)
	defer s.Close()
	ctx := context.Background()
	for o := range res.acks {
		effs := effects[o]
		if len(effs) == 0 {
			continue // reported already
		}
		key := effs[0].key
		for _, e := range effs[1:] {
			assert.Equal(t, key, e.key, "payment %s ran under two stored keys", o)
		}
		rec, err := s.Get(ctx, key)
		if !assert.NoError(t, err, "payment %s: acknowledged, but its record %q is gone", o, key) {
			continue
		}
		assert.Equal(t, idem.StateCompleted, rec.State, "payment %s: record %q", o, key)
	}
}

// Two services: the upstream, killed again and again, charges through a
// downstream (never killed) with the key idem.SubKey(ctx, "charge"), where
// ctx is the upstream handler's. A run of the upstream cut short by a kill
// runs again on the client's retry and sends the same key, so the
// downstream replays: every payment charges exactly once.
func TestCrashTwoServicesSubKey(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}
	kills := killsFromEnv(t)
	dir := t.TempDir()
	down := newService(t, roleDownstream, filepath.Join(dir, roleDownstream))
	up := newService(t, roleUpstream, filepath.Join(dir, roleUpstream), envDownstream+"="+down.base())
	res := runLoad(t, up, kills)
	checkReplays(t, up, res)
	takeovers := up.stderrCount("lease taken over")
	up.kill()
	down.kill() // checks that it did not die on its own
	up.checkStderr()
	down.checkStderr()
	up.logOther("lease taken over")
	down.logOther()

	effects := readEffects(t, down.path("effects.log"))
	runs := map[string]int{}
	subs := map[string][]string{} // the keys each payment's runs sent downstream
	for _, c := range readLog(t, up.path("calls.log"), 2) {
		runs[c[0]]++
		if !slices.Contains(subs[c[0]], c[1]) {
			subs[c[0]] = append(subs[c[0]], c[1])
		}
	}
	var missing, foreign, dups []string
	reruns, replayed, total := 0, 0, 0
	for o, a := range res.acks {
		effs := effects[o]
		switch len(effs) {
		case 0:
			missing = append(missing, o)
			continue
		case 1:
		default:
			dups = append(dups, fmt.Sprintf("%s: %d charges %v; its %d runs sent the keys %v", o, len(effs), effs, runs[o], subs[o]))
		}
		if len(subs[o]) != 1 || subs[o][0] != a.receipt.SubKey {
			t.Errorf("payment %s: its runs sent the downstream the keys %v, its answer names %s: idem.SubKey is not stable across runs",
				o, subs[o], a.receipt.SubKey)
		}
		if effs[0].charge != a.receipt.Charge {
			t.Errorf("payment %s: the client was told of charge %s, the downstream made %v", o, a.receipt.Charge, effs)
		}
		if !strings.HasSuffix(effs[0].key, a.receipt.SubKey) {
			t.Errorf("payment %s: the downstream charged under the stored key %q, not the sub key %s", o, effs[0].key, a.receipt.SubKey)
		}
		if runs[o] > 1 {
			reruns++
		}
		if a.receipt.DownstreamReplayed {
			replayed++
		}
	}
	for o, effs := range effects {
		total += len(effs)
		if _, ok := res.acks[o]; !ok {
			foreign = append(foreign, o)
		}
	}
	assert.Empty(t, missing, "acknowledged payments that never charged")
	assert.Empty(t, foreign, "charges for payments no client acknowledged")
	sort.Strings(dups)
	assert.Empty(t, dups, "payments the downstream charged more than once")

	t.Logf("two services, derived keys: %d kills of the upstream, %d payments, %d downstream effects, %d payments charged more than once; "+
		"%d payments ran again in the upstream after a kill (%d leases taken over), %d of them answered with the downstream's replay; %d client retries",
		kills, len(res.acks), total, len(dups), reruns, takeovers, replayed, res.retries)
}
