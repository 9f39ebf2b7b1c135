//go:build !linux

// Command demo needs Linux (network namespaces, QEMU, dockerd).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "demo: needs Linux")
	os.Exit(1)
}
