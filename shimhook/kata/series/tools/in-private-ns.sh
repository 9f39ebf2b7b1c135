#!/bin/sh
# Run a command in private network and mount namespaces, so that Kata's unit
# tests (some of which create links with fixed names such as "foo", "bar"
# and "ifb0" in the current network namespace) cannot touch the machine's
# own network, and their network namespace bind mounts stay private.
# In there:
# - /run is a private tmpfs, with a syslog sink at /run/syslog: Kata's
#   LoadConfiguration() fails without a syslog socket;
# - /dev is an overlay of the real /dev with an empty /dev/vhost-vsock:
#   Kata's configuration check stats it, and this machine has no vsock.
# Nothing outside these namespaces changes.
#
#   in-private-ns.sh COMMAND [ARG...]
set -eu
exec unshare --net --mount --propagation private sh -c '
	set -eu
	ip link set lo up
	mount -t tmpfs -o mode=0755 kata-test-run /run
	mkdir -p /run/netns /run/kata-test/orig /run/kata-test/upper /run/kata-test/work
	mount --rbind /dev /run/kata-test/orig
	mount -t overlay kata-test-dev -o lowerdir=/run/kata-test/orig,upperdir=/run/kata-test/upper,workdir=/run/kata-test/work /dev
	for m in pts shm mqueue; do
		if mountpoint -q /run/kata-test/orig/$m; then mount --bind /run/kata-test/orig/$m /dev/$m; fi
	done
	[ -e /dev/vhost-vsock ] || : >/dev/vhost-vsock
	python3 -c "
import socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(\"/run/syslog\")
while True:
    s.recv(65536)
" &
	sink=$!
	i=0; while [ ! -S /run/syslog ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
	rc=0; "$@" || rc=$?
	kill $sink
	exit $rc
' in-private-ns "$@"
