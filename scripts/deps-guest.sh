#!/usr/bin/env bash
# Installs what the QEMU guest tests need (e2e/internal/guest, e2e/internal/katasim):
# qemu-system-x86 and busybox-static from apt, a Debian cloud kernel unpacked into
# the cache, and a small initramfs (static busybox + the virtio-net modules + /init).
#
# The kernel is Debian 12's 6.12 cloud kernel (meta-package linux-image-6.12-cloud-amd64),
# the closest Debian 12 has to the v6.18 guest kernel Kata 4.1 ships (versions.yaml:208).
# The guest agent follows Kata's agent call by call, so the guest kernel's answers matter:
# since 6.2 the kernel renames a link that is UP (6.1 refused with EBUSY), which Kata's
# agent relies on when it swaps names (docs/kata-model.md).
#
# Idempotent: every artifact already present in the cache is reused. Files are named
# after the kernel version, so a guest booting from an older layout is never handed a
# kernel and an initramfs of different versions while this runs.
#
#   KNM_CACHE              cache dir (default /var/cache/kata-netmon); guest files go to $KNM_CACHE/guest
#   KNM_GUEST_KERNEL_META  the kernel meta-package (default linux-image-6.12-cloud-amd64)
#
# Outputs in $KNM_CACHE/guest:
#   kernel-<kver>/                 the unpacked kernel package
#   initramfs-base-<kver>.cpio.gz  busybox, modules, /init; no agent. The Go test helper appends a
#                                  second cpio archive holding /agent (built from e2e/internal/guest/agent).
#   initramfs-<kver>.cpio.gz       base + /agent, when `go` is on PATH (for booting by hand).
#   guest-<layout>.env             KNM_GUEST_KVER, KNM_GUEST_KERNEL, KNM_GUEST_INITRD_BASE: what the
#                                  Go helper boots (e2e/internal/guest/artifacts.go reads it).
set -euo pipefail

KNM_CACHE="${KNM_CACHE:-/var/cache/kata-netmon}"
GUEST="$KNM_CACHE/guest"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Insertion order matters: each needs the ones before it.
MODULES=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net)
# Bump when the layout of the base initramfs or of the cache changes (the Go helper
# reads guest-$INITRAMFS_LAYOUT.env: keep guestLayout in e2e/internal/guest/artifacts.go equal).
INITRAMFS_LAYOUT=2
KMETA="${KNM_GUEST_KERNEL_META:-linux-image-6.12-cloud-amd64}"

log() { printf '[deps-guest] %s\n' "$*" >&2; }

# timed NAME CMD...: runs CMD and prints how long it took.
timed() {
	local name="$1"
	shift
	local start=$EPOCHREALTIME
	"$@"
	log "$(printf '%-26s %6.2fs' "$name" "$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{print b-a}')")"
}

if [[ $EUID -ne 0 ]]; then
	log "must run as root (apt-get)"
	exit 1
fi

mkdir -p "$GUEST"
# One run at a time (go test may start several packages that need the guest).
exec 9>"$GUEST/.lock"
flock 9
# Leftovers of an interrupted run.
rm -rf "$GUEST"/.root.* "$GUEST"/.dl.* "$GUEST"/.agent.* "$GUEST"/kernel-*.tmp

APT=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -y -q)
apt_updated=0
apt_update_once() {
	if ((apt_updated == 0)); then
		"${APT[@]}" update -qq
		apt_updated=1
	fi
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

apt_install() {
	local missing=() p
	for p in "$@"; do
		installed "$p" || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	# Lists may be absent (fresh image) or stale: update once, then install.
	if ! apt-cache show --no-all-versions "${missing[@]}" >/dev/null 2>&1; then
		apt_update_once
	fi
	log "apt-get install ${missing[*]}"
	if ! "${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null; then
		apt_update_once
		"${APT[@]}" install --no-install-recommends "${missing[@]}" >/dev/null
	fi
}

timed "apt qemu+busybox" apt_install qemu-system-x86 busybox-static cpio

# --- guest kernel -------------------------------------------------------------
# The ABI number N changes at point releases and old packages vanish from the
# mirror: ask what the meta-package depends on right now.
kernel_pkg() {
	apt-cache depends "$KMETA" 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-cloud-amd64\)$/\1/p' | head -n1
}
PKG="$(kernel_pkg)"
if [[ -z "$PKG" ]]; then
	apt_update_once
	PKG="$(kernel_pkg)"
fi
[[ -n "$PKG" ]] || { log "cannot find what $KMETA depends on"; exit 1; }
KVER="${PKG#linux-image-}"
KDIR="$GUEST/kernel-$KVER"

fetch_kernel() {
	local tmp
	tmp="$(mktemp -d "$GUEST/.dl.XXXXXX")"
	# apt downloads as user _apt.
	chmod 0755 "$tmp"
	chown _apt "$tmp" 2>/dev/null || true
	# The exact package name, never a glob (a glob matches dozens of packages).
	if ! (cd "$tmp" && apt-get -q download "$PKG" >/dev/null); then
		# Stale lists name a .deb the mirror dropped: refresh once and retry.
		apt_update_once
		(cd "$tmp" && apt-get -q download "$PKG" >/dev/null)
	fi
	rm -rf "$KDIR.tmp"
	dpkg -x "$tmp"/"$PKG"_*.deb "$KDIR.tmp"
	rm -rf "$tmp" "$KDIR"
	mv "$KDIR.tmp" "$KDIR"
}
if [[ ! -f "$KDIR/boot/vmlinuz-$KVER" ]]; then
	timed "kernel $PKG" fetch_kernel
else
	log "kernel $KVER cached"
fi
KERNEL="$KDIR/boot/vmlinuz-$KVER"

# --- base initramfs -----------------------------------------------------------
BASE="$GUEST/initramfs-base-$KVER.cpio.gz"
STAMP="$GUEST/initramfs-base-$KVER.stamp"
BUSYBOX=/bin/busybox
want_stamp="layout=$INITRAMFS_LAYOUT kver=$KVER busybox=$(sha256sum "$BUSYBOX" | cut -c1-16)"

build_base() {
	local root moddir m f
	root="$(mktemp -d "$GUEST/.root.XXXXXX")"
	moddir="$KDIR/lib/modules/$KVER"
	mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,lib/modules}
	cp "$BUSYBOX" "$root/bin/busybox"
	: >"$root/lib/modules/order"
	for m in "${MODULES[@]}"; do
		# Built into this kernel: nothing to load.
		if grep -qE "/$m\.ko$" "$moddir/modules.builtin" 2>/dev/null; then
			log "module $m is built in"
			continue
		fi
		# The .deb ships no modules.dep (depmod runs at install): find the file.
		f="$(cd "$moddir" && find kernel -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)"
		[[ -n "$f" ]] || { log "module $m not found under $moddir"; exit 1; }
		case "$f" in
		*.ko) cp "$moddir/$f" "$root/lib/modules/$m.ko" ;;
		*.ko.xz) xz -dc "$moddir/$f" >"$root/lib/modules/$m.ko" ;;
		*.ko.zst) zstd -qdc "$moddir/$f" >"$root/lib/modules/$m.ko" ;;
		*.ko.gz) gzip -dc "$moddir/$f" >"$root/lib/modules/$m.ko" ;;
		esac
		echo "$m" >>"$root/lib/modules/order"
	done
	cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
for m in $(cat /lib/modules/order); do
	insmod /lib/modules/$m.ko || echo "knm-init: insmod $m failed"
done
ip link set lo up
echo "knm-init: modules loaded"
if [ -x /agent ]; then
	exec /agent -port /dev/ttyS1
fi
echo "knm-init: no /agent in the initramfs"
exec sh
EOF
	chmod 0755 "$root/init"
	(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 | gzip -9n) >"$BASE.tmp"
	mv "$BASE.tmp" "$BASE"
	rm -rf "$root"
	echo "$want_stamp" >"$STAMP"
}
if [[ ! -f "$BASE" || "$(cat "$STAMP" 2>/dev/null)" != "$want_stamp" ]]; then
	timed "initramfs-base" build_base
	log "initramfs-base $(stat -c %s "$BASE") bytes"
else
	log "initramfs-base cached"
fi

# --- optional: the full initramfs with the agent, for booting by hand ----------
build_full() {
	local root
	root="$(mktemp -d "$GUEST/.agent.XXXXXX")"
	(cd "$REPO" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$root/agent" ./e2e/internal/guest/agent)
	(cd "$root" && echo agent | cpio --quiet -o -H newc -R 0:0 | gzip -9n) >"$root/agent.cpio.gz"
	cat "$BASE" "$root/agent.cpio.gz" >"$GUEST/initramfs-$KVER.cpio.gz.tmp"
	mv "$GUEST/initramfs-$KVER.cpio.gz.tmp" "$GUEST/initramfs-$KVER.cpio.gz"
	rm -rf "$root"
}
if command -v go >/dev/null && [[ -d "$REPO/e2e/internal/guest/agent" ]]; then
	timed "initramfs+agent" build_full
fi

ENVF="$GUEST/guest-$INITRAMFS_LAYOUT.env"
cat >"$ENVF.tmp" <<EOF
KNM_GUEST_KVER=$KVER
KNM_GUEST_KERNEL=$KERNEL
KNM_GUEST_INITRD_BASE=$BASE
EOF
mv "$ENVF.tmp" "$ENVF"
log "ready: kernel $KVER in $GUEST"
