// A CoreDNS build with only the plugins the test control plane's cluster DNS uses
// (up.sh writes the Corefile). Upstream's main package imports every plugin
// (core/plugin/zplugin.go), which pulls in the AWS, Azure and Google Cloud SDKs; this
// is the custom build CoreDNS documents: import the plugins and set
// dnsserver.Directives to them, in upstream's order (core/dnsserver/zdirectives.go),
// which is the order a query runs through them.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{
		"bind",
		"ready",
		"errors",
		"log",
		"cache",
		"kubernetes",
		"forward",
	}
}

func main() {
	coremain.Run()
}
