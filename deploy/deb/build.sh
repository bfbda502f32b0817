#!/usr/bin/env bash
# Builds bianque's Debian package from a built binary: the binary, the systemd unit, the example
# config installed as the conffile /etc/bianque/bianque.toml (every key at its default), the man
# page and shell completions. The postinst creates the `bianque` system user the unit runs as; the
# service is not enabled or started (the operator does: systemctl enable --now bianque).
#
# Usage: deploy/deb/build.sh BINARY OUTDIR   (prints the .deb's path)
# DEB_COMPRESSION=none|gzip|xz (default xz) picks dpkg-deb's compressor.
set -euo pipefail

bin=$1
out=$2
repo=$(cd "$(dirname "$0")/../.." && pwd)
version=$("$bin" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$bin" "$stage/usr/bin/bianque"
install -D -m 0644 "$repo/deploy/systemd/bianque.service" "$stage/lib/systemd/system/bianque.service"
install -D -m 0640 "$repo/deploy/bianque.example.toml" "$stage/etc/bianque/bianque.toml"
install -D -m 0644 "$repo/deploy/bianque.example.toml" \
	"$stage/usr/share/doc/bianque/examples/bianque.example.toml"
install -d "$stage/usr/share/man/man1" "$stage/usr/share/bash-completion/completions" \
	"$stage/usr/share/zsh/vendor-completions" "$stage/DEBIAN"
"$bin" man | gzip -9n >"$stage/usr/share/man/man1/bianque.1.gz"
"$bin" completions bash >"$stage/usr/share/bash-completion/completions/bianque"
"$bin" completions zsh >"$stage/usr/share/zsh/vendor-completions/_bianque"

cat >"$stage/DEBIAN/control" <<CONTROL
Package: bianque
Version: $version
Architecture: $arch
Maintainer: bianque developers <bianque@localhost>
Depends: libc6, libelf1, zlib1g, passwd
Section: admin
Priority: optional
Homepage: https://github.com/bianque/bianque
Description: Linux kernel observability agent
 eBPF kernel events (packet drops, OOM kills, lockups, hung tasks, reclaim
 stalls), Prometheus metrics from procfs and cgroups, and anomaly-triggered
 tracing, with a local store, an Elasticsearch shipper and a console.
CONTROL
echo /etc/bianque/bianque.toml >"$stage/DEBIAN/conffiles"

cat >"$stage/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
	if ! getent passwd bianque >/dev/null; then
		useradd --system --user-group --no-create-home --home-dir /var/lib/bianque \
			--shell /usr/sbin/nologin bianque
	fi
	chgrp bianque /etc/bianque/bianque.toml
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload || true
	fi
fi
POSTINST
cat >"$stage/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
	rm -rf /var/lib/bianque
	if getent passwd bianque >/dev/null; then
		userdel bianque || true
	fi
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
POSTRM
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/bianque_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESSION:-xz}" --build "$stage" "$deb" >/dev/null
echo "$deb"
