#!/usr/bin/env bash
# Builds the Debian package of kloigos from this workspace, without cargo-deb
# or debhelper: it stages the file tree, writes DEBIAN/ (control, the
# maintainer scripts, md5sums) and runs dpkg-deb --build --root-owner-group.
#
#   packaging/deb/build.sh                          cargo build --release, then package
#   packaging/deb/build.sh --profile debug          the same from a debug build (the tests)
#   packaging/deb/build.sh --bin-dir DIR --no-build prebuilt kloigos, kloigos-housekeeper,
#                                                   libpam_kloigos.so and kloigos-gen in DIR
#   --out DIR       where the .deb goes (default: target/deb); its path is printed last
#   --no-strip      keep debug symbols
#
# Needs: dpkg-deb, gzip, cargo (unless --no-build). Version: the workspace's
# Cargo.toml; architecture: dpkg --print-architecture; the PAM module goes
# where this system's pam_unix.so is (Debian 12: /lib/<multiarch>/security).
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PKG_DIR="$ROOT_DIR/packaging"
PROFILE=release
BIN_DIR=""
OUT_DIR="$ROOT_DIR/target/deb"
BUILD=1
STRIP=1

while [ $# -gt 0 ]; do
    case "$1" in
    --profile) [ $# -ge 2 ] || die "--profile needs debug or release"; PROFILE=$2; shift 2 ;;
    --bin-dir) [ $# -ge 2 ] || die "--bin-dir needs a directory"; BIN_DIR=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; OUT_DIR=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --no-strip) STRIP=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
    esac
done
case "$PROFILE" in debug | release) ;; *) die "--profile must be debug or release, not '$PROFILE'" ;; esac
# Where cargo builds: CARGO_TARGET_DIR, build.target-dir in a cargo config,
# or ./target; cargo itself knows.
TARGET_DIR=$(cd "$ROOT_DIR" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || TARGET_DIR=
[ -n "$TARGET_DIR" ] || TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT_DIR/target}"
[ -n "$BIN_DIR" ] || BIN_DIR="$TARGET_DIR/$PROFILE"

command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (apt-get install dpkg)"

if [ "$BUILD" = 1 ]; then
    flag=()
    [ "$PROFILE" = debug ] || flag=(--release)
    (cd "$ROOT_DIR" && cargo build --quiet "${flag[@]}" -p kloigos-cli -p housekeeper -p pam_kloigos -p kloigos-gen) ||
        die "cargo build failed"
fi
for f in kloigos kloigos-housekeeper libpam_kloigos.so kloigos-gen; do
    [ -f "$BIN_DIR/$f" ] || die "$BIN_DIR/$f is missing: build first (cargo build -p kloigos-cli -p housekeeper -p pam_kloigos -p kloigos-gen) or give --bin-dir"
done

VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "$ROOT_DIR/Cargo.toml")"
[ -n "$VERSION" ] || die "no version in [workspace.package] of $ROOT_DIR/Cargo.toml"
ARCH="$(dpkg --print-architecture)"
# The PAM module directory: where this system's pam_unix.so is.
PAM_UNIX="$(dpkg-query -S '*/security/pam_unix.so' 2>/dev/null | head -n 1 | sed 's/^.*: //')"
if [ -n "$PAM_UNIX" ]; then
    PAM_MOD_DIR="$(dirname "$PAM_UNIX")"
else
    MULTIARCH="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch 2>/dev/null || true)"
    [ -n "$MULTIARCH" ] || die "cannot tell the multiarch triplet: install libpam-modules or dpkg-dev"
    PAM_MOD_DIR="/lib/$MULTIARCH/security"
fi
# systemd units beside the PAM modules' /lib or /usr/lib (Debian 12: /lib).
case "$PAM_MOD_DIR" in /usr/*) UNIT_DIR=/usr/lib/systemd/system ;; *) UNIT_DIR=/lib/systemd/system ;; esac
LIBC="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
[ -n "$LIBC" ] || die "cannot tell the glibc version (getconf GNU_LIBC_VERSION)"

STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
R="$STAGE/root"
GEN="$STAGE/gen"

put() { # put MODE SRC DEST (DEST relative to the package root)
    install -D -m "$1" "$2" "$R/$3"
}
strip_if() {
    [ "$STRIP" = 1 ] && command -v strip >/dev/null || return 0
    strip --strip-unneeded --remove-section=.comment --remove-section=.note "$R/$1"
}

# Programs. kloigos ships root:root 0755; postinst makes it setuid to the
# service account (dpkg-statoverride), which exists only once postinst made it.
put 0755 "$BIN_DIR/kloigos" usr/bin/kloigos && strip_if usr/bin/kloigos
put 0755 "$BIN_DIR/kloigos-housekeeper" usr/sbin/kloigos-housekeeper && strip_if usr/sbin/kloigos-housekeeper
put 0644 "$BIN_DIR/libpam_kloigos.so" "${PAM_MOD_DIR#/}/pam_kloigos.so" && strip_if "${PAM_MOD_DIR#/}/pam_kloigos.so"
put 0755 "$PKG_DIR/deb/kloigos-pam" usr/sbin/kloigos-pam

# The housekeeper every minute: systemd units, and the cron entry postinst
# copies to /etc/cron.d on nodes without systemd.
put 0644 "$PKG_DIR/systemd/kloigos-housekeeper.service" "${UNIT_DIR#/}/kloigos-housekeeper.service"
put 0644 "$PKG_DIR/systemd/kloigos-housekeeper.timer" "${UNIT_DIR#/}/kloigos-housekeeper.timer"
put 0644 "$PKG_DIR/cron/kloigos-housekeeper" usr/share/kloigos/cron.d/kloigos-housekeeper

# Man pages and completions: generated from the clap definitions, plus the
# hand-written section 8 pages.
date="$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%d)"
"$BIN_DIR/kloigos-gen" "$GEN" --date "$date" >/dev/null || die "kloigos-gen failed"
for page in "$GEN"/man/*.1; do
    put 0644 "$page" "usr/share/man/man1/$(basename "$page")"
done
for page in "$PKG_DIR"/man/*.8; do
    put 0644 "$page" "usr/share/man/man8/$(basename "$page")"
done
gzip -9n "$R"/usr/share/man/man1/*.1 "$R"/usr/share/man/man8/*.8
put 0644 "$GEN/completions/kloigos.bash" usr/share/bash-completion/completions/kloigos
put 0644 "$GEN/completions/_kloigos" usr/share/zsh/vendor-completions/_kloigos
put 0644 "$GEN/completions/kloigos.fish" usr/share/fish/vendor_completions.d/kloigos.fish

# Documentation and the configuration example.
DOC=usr/share/doc/kloigos
put 0644 "$ROOT_DIR/config.example.json" "$DOC/examples/config.example.json"
put 0644 "$ROOT_DIR/README.md" "$DOC/README.md"
gzip -9n "$R/$DOC/README.md"
cat >"$STAGE/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kloigos

Files: *
Copyright: the kloigos authors
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0; the MIT license: permission is
 granted, free of charge, to deal in the software without restriction,
 provided the copyright notice and this permission notice are included.
COPYRIGHT
put 0644 "$STAGE/copyright" "$DOC/copyright"
printf 'kloigos (%s) unstable; urgency=medium\n\n  * Built from the kloigos workspace by packaging/deb/build.sh.\n\n -- kloigos maintainers <root@localhost>  %s\n' \
    "$VERSION" "$(date -u -R -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")" >"$STAGE/changelog.Debian"
put 0644 "$STAGE/changelog.Debian" "$DOC/changelog.Debian"
gzip -9n "$R/$DOC/changelog.Debian"

# Directories the package owns (dpkg removes them when empty).
install -d -m 0755 "$R/etc/kloigos/hooks/release.d"

# DEBIAN/
install -d -m 0755 "$R/DEBIAN"
for s in preinst postinst prerm postrm; do
    sed -e "s|@PAM_MOD_DIR@|$PAM_MOD_DIR|g" -e "s|@UNIT_DIR@|$UNIT_DIR|g" "$PKG_DIR/deb/$s" >"$R/DEBIAN/$s"
    chmod 0755 "$R/DEBIAN/$s"
done
SIZE="$(du -sk --exclude=DEBIAN "$R" | cut -f1)"
cat >"$R/DEBIAN/control" <<CONTROL
Package: kloigos
Version: $VERSION
Architecture: $ARCH
Maintainer: kloigos maintainers <root@localhost>
Installed-Size: $SIZE
Depends: libc6 (>= $LIBC), libpam0g, adduser | passwd
Recommends: nftables, pamtester
Suggests: openssh-server, cron | systemd-sysv
Section: admin
Priority: optional
Description: book the machines of a small shared cluster
 Users book a whole host, or a range of its CPUs (with the ports that go
 with them), for a span of time, now or later. Only while the booking holds
 can that user log in over SSH (the PAM account module pam_kloigos); while
 it holds their processes are confined to their CPUs and ports; when it
 ends, the node takes back what they left running (kloigos-housekeeper,
 every minute from a systemd timer or cron).
 .
 The state lives in small JSON files on a shared (NFS) directory owned by
 the service account kloigos, which this package creates. PAM is not wired
 in automatically: run kloigos-pam enable once the node is set up.
CONTROL
(cd "$R" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$R/DEBIAN/md5sums"
chmod 0644 "$R/DEBIAN/control" "$R/DEBIAN/md5sums"

mkdir -p "$OUT_DIR"
DEB="$OUT_DIR/kloigos_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group --build "$R" "$DEB" >/dev/null
echo "$DEB"
