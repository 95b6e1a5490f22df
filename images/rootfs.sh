#!/bin/sh
# Assembles the root filesystem of a gost-rs image: BINARY at /usr/local/bin, the shared
# libraries it links (glibc, libgcc_s and the loader, as `ldd` lists them) and a home
# for the non-root user; nothing else: no shell, no package manager.
#
#   images/rootfs.sh target/release/gost OUT
#
# The Dockerfiles run it in their build stage and copy OUT onto `scratch`; the tests run it on
# this machine and start the binary inside it with chroot, as uid 65532.
set -eu
binary=$1
out=$2
name=$(basename "$binary")

mkdir -p "$out/usr/local/bin" "$out/etc" "$out/tmp" "$out/home/nonroot"
install -m 0755 "$binary" "$out/usr/local/bin/$name"
# Every library the binary loads, at the path the loader looks for it. glibc 2.34 and later
# carry the `files` and `dns` name services inside libc itself, so DNS works without NSS
# modules (Kubernetes mounts /etc/resolv.conf and /etc/hosts).
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
  while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
  done
# uid/gid 65532, the conventional `nonroot` of distroless images and the uid the operator
# runs sidecars as; a name for tools that print one.
echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$out/etc/passwd"
echo 'nonroot:x:65532:' >"$out/etc/group"
chmod 1777 "$out/tmp"
chown 65532:65532 "$out/home/nonroot" 2>/dev/null || true
