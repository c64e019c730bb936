package main

import (
	"net"
	"net/http"
	"os"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/idemdb/idem"
	"github.com/idemdb/idem/idemadmin"
	"github.com/idemdb/idem/idemprom"
)

// adminHandler serves the admin endpoint of a running store (idem serve
// -admin), for a listen address of its own (never the public one): GET
// /metrics, Prometheus metrics gathered from reg, beside idemadmin's
// /admin/ endpoints (records, list, stats, and with opts.Repairs the
// fenced repairs). Both answer only the hosts opts allows (loopback by
// default) and refuse requests from web pages of other sites.
//
// reg should hold an idemprom.Collector for s (and the idemprom.Latency set
// as its Observer); nil means a registry with a Collector alone. Nil opts
// mean idemadmin's defaults.
func adminHandler(s *idem.Store, reg *prometheus.Registry, opts *idemadmin.Options) http.Handler {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(idemprom.NewCollector(s, nil))
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", idemadmin.Protect(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), opts))
	mux.Handle("/admin/", idemadmin.Handler(s, opts))
	return mux
}

// adminHosts returns the hosts, besides loopback ones, that the admin
// endpoint listening on addr answers (idemadmin.Options.AllowedHosts):
// the host of addr, and for an address that names none or an unspecified
// one (":9090", "0.0.0.0:9090"), which listens on every interface, any IP
// address and the machine's name; then those of extra, the -admin-hosts
// flag, a comma-separated list.
func adminHosts(addr, extra string) []string {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	hosts := []string{host}
	if host == "" || host == "0.0.0.0" || host == "::" {
		hosts = []string{"0.0.0.0"}
		if name, err := os.Hostname(); err == nil {
			hosts = append(hosts, name)
		}
	}
	for _, h := range strings.Split(extra, ",") {
		if h = strings.TrimSpace(h); h != "" {
			hosts = append(hosts, h)
		}
	}
	return hosts
}
