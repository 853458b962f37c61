// The pod sandbox's pause process: holds the pod's namespaces and exits on SIGTERM or
// SIGINT. Static (CGO_ENABLED=0), so its image is this one file.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
