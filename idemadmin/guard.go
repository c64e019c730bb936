package idemadmin

import (
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
)

// Protect returns h behind the checks Handler makes of every request
// (its Host, and whether a web page of another site sent it), for
// endpoints served beside Handler on the same address, such as
// Prometheus's /metrics. Of opts only AllowedHosts and Logger count; nil
// opts mean loopback only.
func Protect(h http.Handler, opts *Options) http.Handler {
	a := &server{}
	if opts != nil {
		a.opts.AllowedHosts, a.opts.Logger = opts.AllowedHosts, opts.Logger
	}
	if a.opts.Logger == nil {
		a.opts.Logger = slog.New(slog.DiscardHandler)
	}
	a.hosts = newHostCheck(a.opts.AllowedHosts)
	return a.guard(h)
}

// guard answers, before any endpoint, the requests a web page could make
// an operator's browser send: one for a host the handler is not reached
// by (DNS rebinding: 421), and one a browser marks as coming from another
// site (403).
func (a *server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.hosts.allows(r.Host) {
			a.problem(w, r, http.StatusMisdirectedRequest, Problem{Error: "host " + clip(r.Host, maxLoggedKey) +
				" is not an address of this admin endpoint (idemadmin.Options.AllowedHosts; idem serve -admin-hosts)"})
			return
		}
		if why := crossSite(r); why != "" {
			a.problem(w, r, http.StatusForbidden, Problem{Error: "refused a request from a web page of another site (" + why + ")"})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// hostCheck says which hosts a request may name: loopback ones always,
// and those of Options.AllowedHosts.
type hostCheck struct {
	all   bool            // "*": any host
	anyIP bool            // an unspecified address (0.0.0.0, ::): any IP address
	names map[string]bool // host names in lower case, IP addresses in canonical form
}

func newHostCheck(allowed []string) hostCheck {
	h := hostCheck{names: map[string]bool{}}
	for _, a := range allowed {
		if a == "*" {
			h.all = true
			continue
		}
		host := hostOnly(a)
		if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
			h.anyIP = true
			continue
		}
		if host != "" {
			h.names[host] = true
		}
	}
	return h
}

// allows reports whether the Host of a request, hostport, is one the
// handler answers.
func (h hostCheck) allows(hostport string) bool {
	if h.all {
		return true
	}
	host := hostOnly(hostport)
	if host == "" {
		return false
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.IsLoopback() || h.anyIP || h.names[host]
	}
	// A browser resolves localhost and its subdomains itself, to
	// loopback (RFC 6761): no DNS answer can rebind them.
	return host == "localhost" || strings.HasSuffix(host, ".localhost") || h.names[host]
}

// hostOnly returns the host of hostport (a host, with or without a port,
// an IPv6 address in brackets or not) in the form hostCheck compares: a
// name in lower case without a trailing dot, an IP address in canonical
// form.
func hostOnly(hostport string) string {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.Unmap().WithZone("").String()
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// crossSite returns why r comes from a web page of another site, or "":
// a browser says where a request comes from in Sec-Fetch-Site, or failing
// that in Origin. Tools such as curl and the idem command send neither.
func crossSite(r *http.Request) string {
	switch site := r.Header.Get("Sec-Fetch-Site"); site {
	case "same-origin", "none":
		return ""
	case "":
	default:
		return "Sec-Fetch-Site: " + clip(site, maxLoggedKey)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return ""
	}
	if u, err := url.Parse(origin); err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host) {
		return ""
	}
	return "Origin: " + clip(origin, maxLoggedKey)
}
