package main

import (
	"net/http"
	"time"

	"github.com/idemdb/idem/idemadmin"
)

// adminTimeout bounds one call to an admin endpoint; a list or stats scan
// of a large store takes a while.
const adminTimeout = 5 * time.Minute

// adminClient returns a client for the admin endpoint at addr, the -admin
// flag of get, list, stats and the repairs: a running server's store,
// which the command cannot open itself.
func adminClient(addr string) *idemadmin.Client {
	return idemadmin.NewClient(addr, &http.Client{Timeout: adminTimeout})
}
