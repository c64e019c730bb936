package redisstore

// ClaimWithScript makes b claim new keys with the script, as it does on a
// Redis before 7.0, which refuses SET NX GET.
func ClaimWithScript(b *Backend) { b.noSetNXGet.Store(true) }
