// CoreDNS with only the plugins the cluster test's DNS needs: the Kubernetes API (Services,
// and the pods behind headless ones), the address to listen on, error logging. The full
// plugin set would compile cloud SDKs the test never uses.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
)

// The order plugins handle a query in (CoreDNS's plugin.cfg order, cut to these).
func init() {
	dnsserver.Directives = []string{"bind", "errors", "kubernetes"}
}

func main() {
	coremain.Run()
}
