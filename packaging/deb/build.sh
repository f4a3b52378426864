#!/bin/sh
# Build the cynode .deb from a PyInstaller binary: packaging/deb/build.sh BINARY OUTDIR [VERSION]
# (`make deb` runs it). dpkg-deb is all it needs; files are owned by root in the package
# (--root-owner-group), so no fakeroot either.
set -eu

BINARY=$1
OUTDIR=$2
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VERSION=${3:-$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/node/__init__.py")}
ARCH=$(dpkg --print-architecture)
GLIBC=$(getconf GNU_LIBC_VERSION | awk '{print $2}')  # a PyInstaller binary needs the glibc it was built on

[ -x "$BINARY" ] || { echo "build.sh: $BINARY is not an executable (run make binary first)" >&2; exit 2; }
# What the binary carries: from the note the build writes beside it (packaging/cynode.spec), else
# from the binary itself (a one-file binary unpacks itself to answer, which takes a while).
if [ -f "$BINARY.buildinfo" ]; then
    . "$BINARY.buildinfo"
else
    INFO=$("$BINARY" --version)
    FLAVOR=$(printf '%s\n' "$INFO" | sed -n 's/.*, \([a-z]*\) build .*/\1/p')
    ENGINES=$(printf '%s\n' "$INFO" | sed -n 's/^engines: //p')
fi

TREE=$(mktemp -d "${TMPDIR:-/tmp}/cynode-deb.XXXXXX")
chmod 0755 "$TREE"  # the package root: mktemp makes it 0700
trap 'rm -rf "$TREE"' EXIT
install -D -m 0755 "$BINARY" "$TREE/usr/bin/cynode"
install -D -m 0644 "$REPO/packaging/cynode.service" "$TREE/lib/systemd/system/cynode.service"
install -D -m 0644 "$HERE/cynode.sysusers" "$TREE/usr/lib/sysusers.d/cynode.conf"
install -D -m 0644 "$HERE/cynode.tmpfiles" "$TREE/usr/lib/tmpfiles.d/cynode.conf"
install -D -m 0644 "$REPO/packaging/node.toml" "$TREE/etc/cynode/node.toml"
install -D -m 0644 "$REPO/README.md" "$TREE/usr/share/doc/cynode/README.md"
install -D -m 0644 "$REPO/docs/operations.md" "$TREE/usr/share/doc/cynode/operations.md"
install -D -m 0644 "$REPO/packaging/grafana/cynode.json" "$TREE/usr/share/doc/cynode/grafana-cynode.json"
printf 'cynode\nLicense: Apache-2.0\n' > "$TREE/usr/share/doc/cynode/copyright"

install -d -m 0755 "$TREE/DEBIAN"
SIZE_KB=$(du -sk --exclude=DEBIAN "$TREE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@SIZE_KB@/$SIZE_KB/" -e "s/@GLIBC@/$GLIBC/" \
    -e "s/@FLAVOR@/${FLAVOR:-full}/" -e "s/@ENGINES@/$ENGINES/" "$HERE/control.in" > "$TREE/DEBIAN/control"
install -m 0644 "$HERE/conffiles" "$TREE/DEBIAN/conffiles"
install -m 0755 "$HERE/postinst" "$HERE/prerm" "$HERE/postrm" "$TREE/DEBIAN/"

mkdir -p "$OUTDIR"
OUT="$OUTDIR/cynode_${VERSION}_${ARCH}.deb"
# -Znone: the binary is already compressed by PyInstaller; compressing it again buys nothing and
# costs minutes for a binary of a gigabyte.
dpkg-deb --root-owner-group -Znone --build "$TREE" "$OUT" >/dev/null
echo "$OUT"
