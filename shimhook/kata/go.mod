module github.com/kata-netmon/kata-netmon/shimhook/kata

// This module compiles only inside a Kata tree: shimhook/kata/build.sh
// copies Kata's src/runtime, applies the series, and requires this module
// and the main one from the copy's go.mod (with replace directives pointing
// at this checkout), where `go mod tidy` picks every version. So this file
// lists only the direct requirements, at the versions Kata 4.1.0 uses (a
// higher one here would raise Kata's: runtime-spec 1.3.0 breaks containerd
// 1.7's build), and there is no go.sum.

go 1.26.7

require (
	github.com/containerd/containerd v1.7.33
	github.com/containerd/containerd/api v1.9.0
	github.com/kata-containers/kata-containers/src/runtime v0.0.0-20260822080414-7c6ba40c54ea
	github.com/kata-netmon/kata-netmon v0.0.0-00010101000000-000000000000
	github.com/opencontainers/runtime-spec v1.2.1
	github.com/prometheus/client_golang v1.22.0
	github.com/sirupsen/logrus v1.10.2
	go.uber.org/goleak v1.3.0
	google.golang.org/protobuf v1.36.11
)
