// Package storeinternal lets the packages of this module (its tests, the
// conformance suite, the benchmarks and the command) reach what the public
// API of a Store does not expose: its backend, to plant a corrupt record,
// and the embedded engine under it, to measure Badger beside the store.
// Package idem sets the functions when it is initialized.
package storeinternal

// Backend returns the idem.Backend under an *idem.Store.
var Backend func(store any) any

// Engine returns the *badgerkv.DB under an *idem.Store opened with
// idem.Open, or nil for a store over another backend.
var Engine func(store any) any
