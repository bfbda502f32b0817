#!/bin/sh
# Fills an image build context: DIR/rootfs holds BINARY as /usr/bin/bianque, every shared
# library `ldd` names (at the same paths), an empty data dir and /tmp.
# Usage: stage.sh BINARY DIR
set -eu
bin=$1
dir=$2
root=$dir/rootfs
rm -rf "$root"
mkdir -p "$root/usr/bin" "$root/var/lib/bianque" "$root/tmp" "$root/etc"
cp "$bin" "$root/usr/bin/bianque"
# `ldd` prints "name => /path (addr)" and "/lib64/ld-linux… (addr)"; vdso has no file.
ldd "$bin" | awk '/=> \// { print $3 } /^\t\// { print $1 }' | while read -r lib; do
	mkdir -p "$root$(dirname "$lib")"
	cp -L "$lib" "$root$lib"
done
# Name resolution for `--listen localhost:…` and the kubelet address.
printf '127.0.0.1 localhost\n::1 localhost\n' > "$root/etc/hosts"
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"
cp "$(dirname "$0")/Containerfile" "$dir/Containerfile"
