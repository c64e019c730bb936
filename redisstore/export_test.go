package redisstore

// ClaimWithScript makes b claim new keys with the script, as it does on a
// Redis before 7.0, which refuses SET NX GET.
func ClaimWithScript(b *Backend) { b.noSetNXGet.Store(true) }

// DisableWatch makes b report that it cannot watch, as when Redis refuses
// CONFIG, so that Wait polls only.
func DisableWatch(b *Backend) {
	b.watch.mu.Lock()
	defer b.watch.mu.Unlock()
	b.watch.state = watchOff
}
