#!/bin/sh
# Install cynode from the release tarball (`make tarball`), as the .deb does:
#
#   tar xzf cynode-<version>-linux-<arch>.tar.gz && cd cynode-<version> && sudo ./install.sh
#
# The binary goes to <prefix>/bin (default /usr/local), the unit to /etc/systemd/system, the default
# config to /etc/cynode/node.toml. A config that exists is never overwritten: the new default is
# written beside it as node.toml.new when they differ. The cynode system user and its folders
# (/var/lib/cynode, /var/cache/cynode) are created with systemd-sysusers/systemd-tmpfiles, or
# useradd/install where those are missing. Running it again upgrades the binary and the unit.
#
# Options:  --prefix DIR   where bin/cynode goes (default /usr/local)
#           --root DIR     install into another root (an image, a test); systemd is not touched
set -eu

PREFIX=/usr/local
ROOT=
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=$2; shift 2 ;;
        --root) ROOT=$(cd "$2" && pwd); shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
HERE=$(cd "$(dirname "$0")" && pwd)
for file in cynode cynode.service node.toml cynode.sysusers cynode.tmpfiles; do
    [ -f "$HERE/$file" ] || { echo "install.sh: $HERE/$file is missing: run it from the unpacked tarball" >&2; exit 2; }
done

say() { printf 'install.sh: %s\n' "$*"; }

# 1. The binary and the unit (its ExecStart points at where the binary went).
install -D -m 0755 "$HERE/cynode" "$ROOT$PREFIX/bin/cynode"
install -d -m 0755 "$ROOT/etc/systemd/system"
sed "s|^ExecStart=/usr/bin/cynode |ExecStart=$PREFIX/bin/cynode |" "$HERE/cynode.service" > "$ROOT/etc/systemd/system/cynode.service.tmp"
chmod 0644 "$ROOT/etc/systemd/system/cynode.service.tmp"
mv "$ROOT/etc/systemd/system/cynode.service.tmp" "$ROOT/etc/systemd/system/cynode.service"
say "installed $PREFIX/bin/cynode and /etc/systemd/system/cynode.service"

# 2. The user and folders (the same declarations the .deb ships).
install -D -m 0644 "$HERE/cynode.sysusers" "$ROOT/etc/sysusers.d/cynode.conf"
install -D -m 0644 "$HERE/cynode.tmpfiles" "$ROOT/etc/tmpfiles.d/cynode.conf"
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers ${ROOT:+--root="$ROOT"} cynode.conf
elif ! grep -q '^cynode:' "$ROOT/etc/passwd" 2>/dev/null; then
    useradd ${ROOT:+--prefix "$ROOT"} --system --user-group --home-dir /var/lib/cynode --no-create-home \
        --shell /usr/sbin/nologin --comment "cynode daemon" cynode
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles ${ROOT:+--root="$ROOT"} --create cynode.conf
else
    uid=$(awk -F: '$1 == "cynode" {print $3}' "$ROOT/etc/passwd")
    gid=$(awk -F: '$1 == "cynode" {print $3}' "$ROOT/etc/group")
    install -d -m 0750 -o "$uid" -g "$gid" "$ROOT/var/lib/cynode" "$ROOT/var/cache/cynode"
    install -d -m 0750 -o 0 -g "$gid" "$ROOT/etc/cynode"
fi
say "user cynode, /var/lib/cynode, /var/cache/cynode and /etc/cynode are in place"

# 3. The config: never overwrite one that exists.
if [ ! -e "$ROOT/etc/cynode/node.toml" ]; then
    install -m 0644 "$HERE/node.toml" "$ROOT/etc/cynode/node.toml"
    say "wrote the default /etc/cynode/node.toml"
elif ! cmp -s "$HERE/node.toml" "$ROOT/etc/cynode/node.toml"; then
    install -m 0644 "$HERE/node.toml" "$ROOT/etc/cynode/node.toml.new"
    say "kept your /etc/cynode/node.toml; this version's default is in /etc/cynode/node.toml.new"
fi

# 4. systemd, when this is the running system.
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if systemctl is-active --quiet cynode.service; then
        systemctl restart cynode.service
        say "restarted the running cynode on the new binary"
    fi
fi
say "next: sudo -u cynode $PREFIX/bin/cynode doctor -c /etc/cynode/node.toml; then systemctl enable --now cynode"
