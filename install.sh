#!/usr/bin/env bash
# install.sh: install kloigos on one node of a cluster (run as root on each node).
#
#   ./install.sh --uid 990 --shared /nfs/kloigos [options]    install or update
#   ./install.sh --uninstall [--purge] [--keep-user]          remove what it installed
#
# What it installs (FHS; PREFIX defaults to /usr/local):
#   PREFIX/bin/kloigos               setuid to the service account (mode 4755)
#   PREFIX/sbin/kloigos-housekeeper  root, 0755
#   <PAM module dir>/pam_kloigos.so  where pam_unix.so lives (Debian: /lib/x86_64-linux-gnu/security)
#   /etc/kloigos/config.json         from config.example.json, never overwritten
#   /etc/kloigos/hooks/release.d/    for release hooks
#   /etc/cron.d/kloigos-housekeeper  or a systemd timer, whichever the node has
#   shell completions                when generated files are available
#   /var/lib/kloigos/                local state (root 0755) and install-manifest
# Everything written is listed in /var/lib/kloigos/install-manifest, which
# --uninstall follows; the shared directory is never removed.
set -euo pipefail

SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SRC_DIR
readonly PROG=install.sh
readonly PAM_MARK="# kloigos: SSH logins need a booking on this node (added by install.sh; removed by install.sh --uninstall)"
readonly PAM_LINE="account required pam_kloigos.so"
readonly PAM_SESSION_MARK="# kloigos: the booking's variables (KLOIGOS_*, CUDA_VISIBLE_DEVICES) at login; never refuses (added by install.sh; removed by install.sh --uninstall)"
readonly PAM_SESSION_LINE="session optional pam_kloigos.so"

usage() {
    cat <<'EOF'
usage: ./install.sh --shared PATH [--uid N] [options]      install or update kloigos on this node
       ./install.sh --uninstall [--purge] [--keep-user]   remove what install.sh installed

  --shared PATH         the shared (NFS) directory, owned by the service account
  --uid N               uid of the service account (the same on every node); needed to create it
  --gid N               its gid (default: the uid)
  --service-user NAME   the service account's name (default: kloigos)
  --node NAME           this node's name in the cluster (default: the short host name)
  --bin-dir DIR         take prebuilt kloigos, kloigos-housekeeper and libpam_kloigos.so
                        from DIR instead of building (cargo build --release)
  --prefix DIR          installation prefix for the programs (default: /usr/local)
  --destdir DIR         stage everything under DIR (also: DESTDIR=DIR); no account is
                        created, no service started, nothing outside DIR is changed
  --init-shared         create the shared directory (or take over an existing one):
                        owner uid:gid, mode 0755; then run `kloigos admin init` once yourself
  --enable-pam          wire pam_kloigos.so into the sshd PAM stack: back it up, add
                        the account line (logins need a booking) and the session line
                        (the booking's variables), check with pamtester that root still
                        gets in, roll back otherwise
  --pam-dir DIR         the PAM configuration directory (default: /etc/pam.d)
  --pam-module-dir DIR  where PAM modules live (default: the directory holding pam_unix.so)
  --scheduler KIND      auto (default), cron or systemd: how the housekeeper runs every minute
  --uninstall           remove everything listed in the install manifest (the nftables
                        table and limits, the timer or cron entry, the PAM lines, the
                        programs, the account if install.sh created it); keeps the shared data
  --purge               with --uninstall: also remove a config.json edited since install
  --keep-user           with --uninstall: keep the service account
  --dry-run             print the steps, change nothing
  -h, --help            this text
EOF
}

die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
usage_error() {
    printf '%s: %s\n(see ./install.sh --help)\n' "$PROG" "$*" >&2
    exit 2
}
say() { printf '%s: %s\n' "$PROG" "$*"; }

# ---------------------------------------------------------------- arguments

UID_ARG=""
GID_ARG=""
SVC_USER=kloigos
SHARED=""
NODE=""
BIN_DIR=""
PREFIX=/usr/local
DESTDIR="${DESTDIR:-}"
INIT_SHARED=0
ENABLE_PAM=0
PAM_DIR=""
MOD_DIR=""
SCHEDULER=auto
UNINSTALL=0
PURGE=0
KEEP_USER=0
DRY_RUN=0

need_value() {
    [ "$#" -ge 2 ] || usage_error "$1 needs a value"
}

while [ "$#" -gt 0 ]; do
    case "$1" in
    --uid) need_value "$@"; UID_ARG=$2; shift 2 ;;
    --gid) need_value "$@"; GID_ARG=$2; shift 2 ;;
    --service-user) need_value "$@"; SVC_USER=$2; shift 2 ;;
    --shared) need_value "$@"; SHARED=$2; shift 2 ;;
    --node) need_value "$@"; NODE=$2; shift 2 ;;
    --bin-dir) need_value "$@"; BIN_DIR=$2; shift 2 ;;
    --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
    --destdir) need_value "$@"; DESTDIR=$2; shift 2 ;;
    --init-shared) INIT_SHARED=1; shift ;;
    --enable-pam) ENABLE_PAM=1; shift ;;
    --pam-dir) need_value "$@"; PAM_DIR=$2; shift 2 ;;
    --pam-module-dir) need_value "$@"; MOD_DIR=$2; shift 2 ;;
    --scheduler) need_value "$@"; SCHEDULER=$2; shift 2 ;;
    --uninstall) UNINSTALL=1; shift ;;
    --purge) PURGE=1; shift ;;
    --keep-user) KEEP_USER=1; shift ;;
    --dry-run | -n) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument '$1'" ;;
    esac
done

is_number() { [[ "$1" =~ ^[0-9]+$ ]]; }
# Paths end up in JSON, in overlay mount options and in PAM files: keep them plain.
plain_path() { [[ "$1" == /* && "$1" != *[[:cntrl:]\"\\:,]* ]]; }

[ -z "$UID_ARG" ] || is_number "$UID_ARG" || usage_error "--uid '$UID_ARG' is not a number"
[ -z "$GID_ARG" ] || is_number "$GID_ARG" || usage_error "--gid '$GID_ARG' is not a number"
[[ "$SVC_USER" =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || usage_error "--service-user '$SVC_USER' is not a valid account name"
[ -z "$NODE" ] || [[ "$NODE" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] ||
    usage_error "--node '$NODE' is not a node name (letters, digits, '.', '_', '-'; at most 63)"
case "$SCHEDULER" in auto | cron | systemd) ;; *) usage_error "--scheduler '$SCHEDULER': use auto, cron or systemd" ;; esac
plain_path "$PREFIX" || usage_error "--prefix '$PREFIX' must be an absolute path without quotes, backslashes, ':' or ','"
if [ -n "$DESTDIR" ]; then
    plain_path "$DESTDIR" || usage_error "DESTDIR '$DESTDIR' must be an absolute path without quotes, backslashes, ':' or ','"
    DESTDIR="${DESTDIR%/}"
fi
[ -z "$PAM_DIR" ] || plain_path "$PAM_DIR" || usage_error "--pam-dir '$PAM_DIR' must be an absolute path"
[ -z "$MOD_DIR" ] || plain_path "$MOD_DIR" || usage_error "--pam-module-dir '$MOD_DIR' must be an absolute path"
if [ "$UNINSTALL" = 0 ] && { [ "$PURGE" = 1 ] || [ "$KEEP_USER" = 1 ]; }; then
    usage_error "--purge and --keep-user go with --uninstall"
fi

if [ "$(id -u)" != 0 ]; then
    die "must run as root (it installs a setuid program, creates the service account and writes /etc); try: sudo ./install.sh ..."
fi

ROOT="$DESTDIR"                           # prepended to every target path
STATE_DIR="$ROOT/var/lib/kloigos"
MANIFEST="$STATE_DIR/install-manifest"
PAM_BACKUP_DIR="$STATE_DIR/pam-backup"
[ -n "$PAM_DIR" ] || PAM_DIR="$ROOT/etc/pam.d"

TMP="$(mktemp -d /tmp/kloigos-install.XXXXXX)"
MANIFEST_DONE=0
NEW_ENTRIES=()
# On any exit, record what was already installed (so --uninstall can take a
# half-finished install back), then drop the temp dir.
finish() {
    local rc=$?
    if [ "$UNINSTALL" = 0 ] && [ "$DRY_RUN" = 0 ] && [ "$MANIFEST_DONE" = 0 ] && [ "${#NEW_ENTRIES[@]}" -gt 0 ]; then
        write_manifest >/dev/null 2>&1 || true
    fi
    rm -rf "$TMP"
    exit "$rc"
}
trap finish EXIT

# ----------------------------------------------------------------- helpers

# Runs a command, or under --dry-run prints it.
act() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '%s: would run:' "$PROG"
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

record() { NEW_ENTRIES+=("$(printf '%s\t' "$@" | sed 's/\t$//')"); }

# Creates directory $1 (and missing parents) owned by root, mode 0755,
# recording each directory it creates.
declare -A DRY_MADE=()
make_dir() {
    local d="$1" missing=()
    while [ ! -e "$d" ] && [ -z "${DRY_MADE[$d]:-}" ]; do
        missing=("$d" "${missing[@]}")
        d="$(dirname "$d")"
    done
    [ -d "$d" ] || [ -n "${DRY_MADE[$d]:-}" ] || die "$d exists and is not a directory"
    for d in "${missing[@]}"; do
        act install -d -m 0755 -o root -g root "$d"
        [ "$DRY_RUN" = 0 ] || DRY_MADE[$d]=1
        record dir "$d"
    done
}

# Installs file $1 as $2 with mode $3, owner $4:$5, atomically; does nothing
# when it is already exactly so.
put_file() {
    local src="$1" dest="$2" mode="$3" owner="$4" group="$5"
    make_dir "$(dirname "$dest")"
    if [ -f "$dest" ] && cmp -s "$src" "$dest" &&
        [ "$(stat -c '%a %u %g' "$dest")" = "$(printf '%o %s %s' "0$mode" "$owner" "$group")" ]; then
        say "unchanged: $dest"
        record file "$dest"
        return
    fi
    say "install $dest (mode $mode, owner $owner:$group)"
    if [ "$DRY_RUN" = 0 ]; then
        local tmp
        tmp="$(dirname "$dest")/.$(basename "$dest").kloigos-tmp.$$"
        cp "$src" "$tmp"
        # chown clears the setuid bit: the mode comes after it.
        chown "$owner:$group" "$tmp"
        chmod "$mode" "$tmp"
        mv -f "$tmp" "$dest"
    fi
    record file "$dest"
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Merges the new entries into the manifest (first appearance wins); writes
# only when something changed.
write_manifest() {
    MANIFEST_DONE=1
    [ "$DRY_RUN" = 0 ] || { say "would record ${#NEW_ENTRIES[@]} entries in $MANIFEST"; return; }
    {
        [ ! -f "$MANIFEST" ] || cat "$MANIFEST"
        printf '%s\n' "${NEW_ENTRIES[@]}"
    } | awk '!seen[$0]++' >"$TMP/manifest"
    if [ -f "$MANIFEST" ] && cmp -s "$TMP/manifest" "$MANIFEST"; then
        say "unchanged: $MANIFEST"
    else
        put_file "$TMP/manifest" "$MANIFEST" 644 0 0
    fi
}

# The PAM module directory of this system: where pam_unix.so lives.
find_module_dir() {
    local d
    for d in /lib/*-linux-gnu*/security /usr/lib/*-linux-gnu*/security /lib64/security /usr/lib64/security /lib/security /usr/lib/security; do
        if [ -e "$d/pam_unix.so" ]; then
            printf '%s\n' "$d"
            return
        fi
    done
}

# Runs "$@" in a view of the system as installed: in a private mount
# namespace with the staged /etc and module dir laid over the live ones
# (DESTDIR) and the PAM directory in place of /etc/pam.d.
# shellcheck disable=SC2016 # expanded by the inner sh, from its arguments
readonly VIEW_SCRIPT='set -e
root=$1; moddir=$2; pamdir=$3; shift 3
if [ -n "$root" ]; then
  if [ -d "$root/etc" ]; then mount -t overlay kloigos-view -o "lowerdir=$root/etc:/etc" /etc; fi
  if [ -d "$root$moddir" ]; then mount -t overlay kloigos-view -o "lowerdir=$root$moddir:$moddir" "$moddir"; fi
fi
if [ "$pamdir" != /etc/pam.d ]; then mount --bind "$pamdir" /etc/pam.d; fi
exec "$@"'
in_view() {
    if [ -z "$ROOT" ] && [ "$PAM_DIR" = /etc/pam.d ]; then
        "$@"
    else
        unshare --mount --propagation private -- sh -c "$VIEW_SCRIPT" sh "$ROOT" "$MOD_DIR" "$PAM_DIR" "$@"
    fi
}

# Whether pamtester lets root through the sshd account stack; output in $TMP/pamtester.
root_gets_in() {
    in_view pamtester -v sshd root acct_mgmt >"$TMP/pamtester" 2>&1
}

# Whether pamtester opens (and closes) a session for root through the sshd
# session stack; output in $TMP/pamtester.
root_opens_session() {
    in_view pamtester -v sshd root open_session close_session >"$TMP/pamtester" 2>&1
}

# ---------------------------------------------------------------- uninstall

uninstall() {
    [ -f "$MANIFEST" ] || die "no install manifest at $MANIFEST: nothing installed by install.sh here${ROOT:+ (DESTDIR $ROOT)}"
    local kind a b c
    local -a files=() dirs=()
    local cfg="" cfg_sum="" user="" group="" timer="" sbin="" pam_file="" pam_backup="" pam_sum=""
    while IFS=$'\t' read -r kind a b c; do
        case "$kind" in
        file) files+=("$a") ;;
        dir) dirs+=("$a") ;;
        config) cfg=$a; cfg_sum=$b ;;
        user) user=$a ;;
        group) group=$a ;;
        timer) timer=$a ;;
        housekeeper) sbin=$a ;;
        pam) pam_file=$a; pam_backup=$b; pam_sum=$c ;;
        esac
    done <"$MANIFEST"

    # 1. Stop the every-minute passes, then take back what the housekeeper set.
    if [ -n "$timer" ]; then
        say "disable the systemd timer $timer"
        act systemctl disable --now "$timer" || say "warning: systemctl disable $timer failed"
    fi
    if [ -n "$sbin" ] && [ -x "$sbin" ]; then
        if [ -n "$ROOT" ]; then
            say "skipped (DESTDIR): kloigos-housekeeper --uninstall (run it on the node itself)"
        elif [ -f /etc/kloigos/config.json ]; then
            say "remove the nftables table and the limits: kloigos-housekeeper --uninstall"
            act "$sbin" --uninstall || say "warning: kloigos-housekeeper --uninstall failed (see above); check 'nft list tables'"
        fi
    fi

    # 2. The PAM lines.
    if [ -n "$pam_file" ] && [ -f "$pam_file" ]; then
        if [ -f "$pam_backup" ] && [ "$(sha "$pam_file")" = "$pam_sum" ]; then
            say "restore $pam_file from its backup (unchanged since install)"
            act cp -p "$pam_backup" "$pam_file.kloigos-tmp"
            act mv -f "$pam_file.kloigos-tmp" "$pam_file"
        else
            say "remove the kloigos lines from $pam_file (edited since install: the rest is kept)"
            if [ "$DRY_RUN" = 0 ]; then
                cp -p "$pam_file" "$pam_file.kloigos-tmp"
                grep -vxF -e "$PAM_MARK" -e "$PAM_LINE" -e "$PAM_SESSION_MARK" -e "$PAM_SESSION_LINE" \
                    "$pam_file" >"$pam_file.kloigos-tmp" || true
                mv -f "$pam_file.kloigos-tmp" "$pam_file"
            fi
        fi
    fi
    [ -z "$pam_backup" ] || [ ! -e "$pam_backup" ] || act rm -f "$pam_backup"

    # 3. The configuration: removed when unchanged (or --purge).
    if [ -n "$cfg" ] && [ -f "$cfg" ]; then
        if [ "$(sha "$cfg")" = "$cfg_sum" ] || [ "$PURGE" = 1 ]; then
            say "remove $cfg"
            act rm -f "$cfg"
        else
            say "kept $cfg: edited since install (remove it by hand, or --purge)"
        fi
    fi

    # 4. Files, then the local state directory.
    local f
    for f in "${files[@]}"; do
        if [ "$f" = "$MANIFEST" ] || [ "$f" = "$cfg" ]; then continue; fi
        if [ -e "$f" ] || [ -L "$f" ]; then
            say "remove $f"
            act rm -f "$f"
        fi
    done
    if [ -n "$timer" ] && [ -z "$ROOT" ]; then
        act systemctl daemon-reload || true
    fi

    # 5. The account, if install.sh created it (files on the shared tree keep its uid).
    if [ -n "$user" ] && [ "$KEEP_USER" = 0 ] && getent passwd "$user" >/dev/null; then
        say "remove the service account $user (its files on the shared directory are kept)"
        act userdel "$user"
    fi
    if [ -n "$group" ] && [ "$KEEP_USER" = 0 ] && getent group "$group" >/dev/null; then
        act groupdel "$group" || say "warning: groupdel $group failed"
    fi

    # 6. Directories it created, deepest first, then the manifest.
    local i d
    for ((i = ${#dirs[@]} - 1; i >= 0; i--)); do
        d=${dirs[i]}
        [ -d "$d" ] || continue
        if [ "$d" = "$STATE_DIR" ]; then
            # The local state: the housekeeper's copy, lock and record, and the manifest.
            say "remove $d (local state)"
            act rm -rf "$d"
        elif [ "$DRY_RUN" = 1 ]; then
            say "would remove $d if empty"
        elif rmdir "$d" 2>/dev/null; then
            say "remove $d"
        else
            say "kept $d: not empty"
        fi
    done
    if [ -f "$MANIFEST" ]; then
        act rm -f "$MANIFEST"
        [ ! -d "$PAM_BACKUP_DIR" ] || act rmdir "$PAM_BACKUP_DIR" 2>/dev/null || true
    fi
    if [ "$DRY_RUN" = 1 ]; then
        say "dry run: nothing was changed"
    else
        say "uninstalled; the shared directory is untouched"
    fi
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
    exit 0
fi

# ------------------------------------------------------------------ checks

[ -n "$SHARED" ] || usage_error "--shared PATH is required (the NFS mount holding the cluster's state)"
plain_path "$SHARED" || usage_error "--shared '$SHARED' must be an absolute path without quotes, backslashes, ':' or ','"
SHARED="${SHARED%/}"

# The service account: same name and uid on every node.
existing_uid="$(getent passwd "$SVC_USER" | cut -d: -f3 || true)"
if [ -n "$existing_uid" ]; then
    if [ -n "$UID_ARG" ] && [ "$UID_ARG" != "$existing_uid" ]; then
        die "the account $SVC_USER exists with uid $existing_uid, not $UID_ARG: every node must use the same uid (fix the account, or pass --uid $existing_uid)"
    fi
    SVC_UID=$existing_uid
    SVC_GID="$(getent passwd "$SVC_USER" | cut -d: -f4)"
    [ -z "$GID_ARG" ] || [ "$GID_ARG" = "$SVC_GID" ] ||
        die "the account $SVC_USER exists with gid $SVC_GID, not $GID_ARG"
    CREATE_USER=0
else
    [ -n "$UID_ARG" ] || die "the service account $SVC_USER does not exist: give --uid N (the same uid on every node)"
    SVC_UID=$UID_ARG
    SVC_GID="${GID_ARG:-$UID_ARG}"
    holder="$(getent passwd "$SVC_UID" | cut -d: -f1 || true)"
    [ -z "$holder" ] || die "uid $SVC_UID is already taken by the user $holder: pick a free uid for $SVC_USER (the same on every node)"
    CREATE_USER=1
fi
[ "$SVC_UID" != 0 ] || die "the service account must not be root (uid 0)"
group_gid="$(getent group "$SVC_USER" | cut -d: -f3 || true)"
group_holder="$(getent group "$SVC_GID" | cut -d: -f1 || true)"
if [ -n "$group_gid" ] && [ "$group_gid" != "$SVC_GID" ] && [ "$CREATE_USER" = 1 ]; then
    die "the group $SVC_USER exists with gid $group_gid, not $SVC_GID (pass --gid $group_gid)"
fi
if [ -z "$group_gid" ] && [ -n "$group_holder" ] && [ "$CREATE_USER" = 1 ]; then
    die "gid $SVC_GID is already taken by the group $group_holder: pick a free gid with --gid"
fi

# The shared directory.
if [ "$INIT_SHARED" = 0 ]; then
    [ -e "$SHARED" ] || die "the shared directory $SHARED does not exist: mount the NFS export there first (or, on the first node, --init-shared to create it)"
    [ -d "$SHARED" ] || die "the shared path $SHARED is not a directory"
    owner="$(stat -c %u "$SHARED")"
    [ "$owner" = "$SVC_UID" ] || die "the shared directory $SHARED is owned by uid $owner, not by $SVC_USER (uid $SVC_UID): on the file server run chown $SVC_UID:$SVC_GID $SHARED (or --init-shared)"
elif [ -e "$SHARED" ] && [ ! -d "$SHARED" ]; then
    die "the shared path $SHARED is not a directory"
fi

# PAM: the library and its module directory.
if [ -z "$MOD_DIR" ]; then
    MOD_DIR="$(find_module_dir)"
    [ -n "$MOD_DIR" ] || die "libpam missing: no PAM module directory holding pam_unix.so (looked in /lib/*-linux-gnu/security, /usr/lib*/security, /lib*/security); install it (Debian: apt-get install libpam0g libpam-modules) or give --pam-module-dir DIR"
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libpam\.so\.0 ' && [ ! -e "$(dirname "$MOD_DIR")/libpam.so.0" ]; then
    die "libpam missing: libpam.so.0 is not installed (Debian: apt-get install libpam0g)"
fi
if [ "$ENABLE_PAM" = 1 ]; then
    command -v pamtester >/dev/null || die "--enable-pam checks the change with pamtester, which is missing (Debian: apt-get install pamtester)"
    [ -f "$PAM_DIR/sshd" ] || die "--enable-pam: $PAM_DIR/sshd does not exist (is openssh-server installed?)"
fi

# Node name.
if [ -z "$NODE" ]; then
    NODE="$(hostname -s 2>/dev/null || hostname)"
    [[ "$NODE" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || die "the short host name '$NODE' is not a node name: give --node NAME"
fi

# Scheduler.
if [ "$SCHEDULER" = auto ]; then
    if [ -d /run/systemd/system ]; then SCHEDULER=systemd; else SCHEDULER=cron; fi
fi

{ [ -d "$SRC_DIR/packaging" ] && [ -f "$SRC_DIR/config.example.json" ]; } ||
    die "$SRC_DIR/packaging or $SRC_DIR/config.example.json is missing: run install.sh from the kloigos source tree"

# Where cargo builds: CARGO_TARGET_DIR, build.target-dir in a cargo config,
# or ./target; cargo itself knows.
cargo_target_dir() {
    local dir
    dir=$(cd "$SRC_DIR" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || return 1
    [ -n "$dir" ] || return 1
    printf '%s\n' "$dir"
}

# The programs: built here, or prebuilt.
if [ -z "$BIN_DIR" ]; then
    if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    if command -v cargo >/dev/null; then
        TARGET_DIR=$(cargo_target_dir) || die "cargo metadata failed in $SRC_DIR: is it the kloigos source tree? (or pass --bin-dir DIR)"
    elif [ "$DRY_RUN" = 0 ]; then
        die "cargo is not installed: build elsewhere (cargo build --release --workspace) and pass --bin-dir DIR"
    else
        TARGET_DIR="${CARGO_TARGET_DIR:-$SRC_DIR/target}"
    fi
    BIN_DIR="$TARGET_DIR/release"
    say "build in release: cargo build --release -p kloigos-cli -p housekeeper -p pam_kloigos -p kloigos-gen -p kloigos-dashboard, then kloigos-gen $BIN_DIR (completions)"
    if [ "$DRY_RUN" = 0 ]; then
        (cd "$SRC_DIR" && cargo build --release --quiet -p kloigos-cli -p housekeeper -p pam_kloigos -p kloigos-gen -p kloigos-dashboard) ||
            die "the release build failed (see above)"
        # Completions (and man pages) from the clap definitions, where step 7 looks for them.
        "$BIN_DIR/kloigos-gen" "$BIN_DIR" >/dev/null ||
            die "generating shell completions failed (see above)"
    fi
fi
PAM_SO="$BIN_DIR/libpam_kloigos.so"
[ -f "$PAM_SO" ] || PAM_SO="$BIN_DIR/pam_kloigos.so"
if [ "$DRY_RUN" = 0 ] || [ -d "$BIN_DIR" ]; then
    for f in "$BIN_DIR/kloigos" "$BIN_DIR/kloigos-housekeeper" "$PAM_SO"; do
        [ -f "$f" ] || die "$f is missing: build with cargo build --release --workspace, or pass --bin-dir DIR"
    done
fi

say "installing kloigos for node $NODE: shared $SHARED, service account $SVC_USER ($SVC_UID:$SVC_GID), prefix $PREFIX${ROOT:+, DESTDIR $ROOT}"

# --------------------------------------------------------------- the steps

# 1. The service account (never under DESTDIR: that would change this host).
if [ "$CREATE_USER" = 1 ]; then
    if [ -n "$ROOT" ]; then
        say "skipped (DESTDIR): create the account $SVC_USER: groupadd -g $SVC_GID $SVC_USER; useradd -r -u $SVC_UID -g $SVC_GID -d /nonexistent -s /usr/sbin/nologin $SVC_USER"
    else
        if [ -z "$group_gid" ]; then
            say "create the group $SVC_USER (gid $SVC_GID)"
            act groupadd -g "$SVC_GID" "$SVC_USER"
            record group "$SVC_USER"
        fi
        say "create the service account $SVC_USER (uid $SVC_UID)"
        act useradd -r -u "$SVC_UID" -g "$SVC_GID" -d /nonexistent -s /usr/sbin/nologin -c "kloigos service account" "$SVC_USER"
        record user "$SVC_USER"
    fi
else
    say "unchanged: the service account $SVC_USER exists (uid $SVC_UID)"
fi

# 2. The shared directory (only with --init-shared).
if [ "$INIT_SHARED" = 1 ]; then
    if [ ! -d "$SHARED" ]; then
        say "create the shared directory $SHARED (owner $SVC_UID:$SVC_GID, 0755)"
        act install -d -m 0755 -o "$SVC_UID" -g "$SVC_GID" "$SHARED"
    elif [ "$(stat -c '%u %g %a' "$SHARED")" != "$SVC_UID $SVC_GID 755" ]; then
        say "give the shared directory $SHARED to $SVC_UID:$SVC_GID, mode 0755"
        act chown "$SVC_UID:$SVC_GID" "$SHARED"
        act chmod 0755 "$SHARED"
    else
        say "unchanged: the shared directory $SHARED"
    fi
fi

# 3. Local state directory (the manifest lives there).
make_dir "$STATE_DIR"

# 4. Programs and the PAM module.
put_file "$BIN_DIR/kloigos" "$ROOT$PREFIX/bin/kloigos" 4755 "$SVC_UID" "$SVC_GID"
# The dashboard's read-only server, beside kloigos, which execs it (never
# setuid). Optional: only `kloigos dashboard --serve` needs it.
if [ -f "$BIN_DIR/kloigos-dashboard" ]; then
    put_file "$BIN_DIR/kloigos-dashboard" "$ROOT$PREFIX/bin/kloigos-dashboard" 755 0 0
else
    say "skipped: kloigos-dashboard is not in $BIN_DIR (only kloigos dashboard --serve needs it)"
fi
put_file "$BIN_DIR/kloigos-housekeeper" "$ROOT$PREFIX/sbin/kloigos-housekeeper" 755 0 0
record housekeeper "$ROOT$PREFIX/sbin/kloigos-housekeeper"
put_file "$PAM_SO" "$ROOT$MOD_DIR/pam_kloigos.so" 644 0 0

# 5. Configuration: never overwritten.
CONFIG="$ROOT/etc/kloigos/config.json"
make_dir "$ROOT/etc/kloigos"
if [ -e "$CONFIG" ]; then
    say "kept the existing $CONFIG (not overwritten): check its \"shared\" and \"node\""
else
    keep_metrics=0
    [ ! -d "$ROOT/var/lib/prometheus/node-exporter" ] || keep_metrics=1
    awk -v shared="$SHARED" -v node="$NODE" -v svc="$SVC_USER" -v metrics="$keep_metrics" '
        /"partitions"/ { next }
        /"metrics_dir"/ && metrics == 0 { next }
        /^  "shared"/ { print "  \"shared\": \"" shared "\","; next }
        /^  "node"/ { print "  \"node\": \"" node "\","; next }
        /^  "service_user"/ { print "  \"service_user\": \"" svc "\","; next }
        { print }' "$SRC_DIR/config.example.json" >"$TMP/config.json"
    { grep -qF "\"shared\": \"$SHARED\"," "$TMP/config.json" && grep -qF "\"node\": \"$NODE\"," "$TMP/config.json"; } ||
        die "$SRC_DIR/config.example.json no longer has the \"shared\" and \"node\" lines install.sh fills in: update install.sh"
    put_file "$TMP/config.json" "$CONFIG" 644 0 0
    record config "$CONFIG" "$(sha "$TMP/config.json")"
fi
make_dir "$ROOT/etc/kloigos/hooks/release.d"

# 6. The housekeeper every minute.
SBIN_PATH="$PREFIX/sbin/kloigos-housekeeper"
if [ "$SCHEDULER" = cron ]; then
    sed "s|/usr/sbin/kloigos-housekeeper|$SBIN_PATH|g" "$SRC_DIR/packaging/cron/kloigos-housekeeper" >"$TMP/cron"
    put_file "$TMP/cron" "$ROOT/etc/cron.d/kloigos-housekeeper" 644 0 0
    if [ -z "$ROOT" ] && ! pgrep -x cron >/dev/null && ! pgrep -x crond >/dev/null; then
        say "warning: no cron daemon is running: the housekeeper will not run until cron does (Debian: apt-get install cron)"
    fi
else
    for unit in kloigos-housekeeper.service kloigos-housekeeper.timer; do
        sed "s|/usr/sbin/kloigos-housekeeper|$SBIN_PATH|g" "$SRC_DIR/packaging/systemd/$unit" >"$TMP/$unit"
        put_file "$TMP/$unit" "$ROOT/etc/systemd/system/$unit" 644 0 0
    done
    if [ -n "$ROOT" ]; then
        say "skipped (DESTDIR): systemctl daemon-reload; systemctl enable --now kloigos-housekeeper.timer"
    else
        act systemctl daemon-reload
        if ! systemctl is-enabled --quiet kloigos-housekeeper.timer 2>/dev/null || ! systemctl is-active --quiet kloigos-housekeeper.timer 2>/dev/null; then
            say "enable the timer kloigos-housekeeper.timer"
            act systemctl enable --now kloigos-housekeeper.timer
        fi
        record timer kloigos-housekeeper.timer
    fi
fi

# 7. Shell completions, when generated files are at hand.
completion() {
    local name
    for name in "$@"; do
        for d in "$BIN_DIR/completions" "$SRC_DIR/target/completions" "$SRC_DIR/packaging/completions"; do
            if [ -f "$d/$name" ]; then
                printf '%s\n' "$d/$name"
                return
            fi
        done
    done
}
comp_bash="$(completion kloigos.bash)"
comp_zsh="$(completion _kloigos)"
comp_fish="$(completion kloigos.fish)"
[ -z "$comp_bash" ] || put_file "$comp_bash" "$ROOT/usr/share/bash-completion/completions/kloigos" 644 0 0
[ -z "$comp_zsh" ] || put_file "$comp_zsh" "$ROOT/usr/share/zsh/vendor-completions/_kloigos" 644 0 0
[ -z "$comp_fish" ] || put_file "$comp_fish" "$ROOT/usr/share/fish/vendor_completions.d/kloigos.fish" 644 0 0
if [ -z "$comp_bash$comp_zsh$comp_fish" ]; then
    say "skipped: shell completions (no generated kloigos.bash, _kloigos or kloigos.fish under $BIN_DIR/completions)"
fi

# 8. PAM, only when asked, and safely: the account line (logins need a
# booking) after `@include common-account`, and the session line (the
# booking's variables) after the last session module, so that pam_env's
# files cannot override them. Either may be in place already (a node
# enabled before the session hook existed gets only the session line).
if [ "$ENABLE_PAM" = 1 ]; then
    PAM_FILE="$PAM_DIR/sshd"
    BACKUP="$PAM_BACKUP_DIR/sshd"
    add_account=1
    add_session=1
    ! grep -Eq '^[[:space:]]*-?account[[:space:]]+.*pam_kloigos\.so' "$PAM_FILE" || add_account=0
    ! grep -Eq '^[[:space:]]*-?session[[:space:]]+.*pam_kloigos\.so' "$PAM_FILE" || add_session=0
    if [ "$add_account$add_session" = 00 ]; then
        say "unchanged: $PAM_FILE already has pam_kloigos.so in its account and session stacks"
    elif [ "$DRY_RUN" = 1 ]; then
        adds=()
        [ "$add_account" = 0 ] || adds+=("'$PAM_LINE' after '@include common-account'")
        [ "$add_session" = 0 ] || adds+=("'$PAM_SESSION_LINE' after the last session line")
        say "would back up $PAM_FILE to $BACKUP, add ${adds[0]}${adds[1]:+ and ${adds[1]}}, check with pamtester that root still gets in, and roll back if not"
    else
        root_gets_in || die "the sshd PAM stack in $PAM_DIR already refuses root, before any change; $PAM_FILE is left alone. pamtester said: $(cat "$TMP/pamtester")"
        # The session stack is checked after the change only if it lets root
        # in before it (in some containers pam_loginuid refuses everyone).
        session_ok=0
        ! root_opens_session || session_ok=1
        cp -p "$PAM_FILE" "$TMP/sshd.before"
        made_backup=0
        make_dir "$PAM_BACKUP_DIR"
        if [ -f "$BACKUP" ]; then
            # From an earlier --enable-pam: the file as it was before any kloigos line.
            say "kept the backup $BACKUP (from an earlier --enable-pam)"
        else
            say "back up $PAM_FILE to $BACKUP"
            cp -p "$PAM_FILE" "$BACKUP"
            made_backup=1
        fi
        cp -p "$PAM_FILE" "$PAM_FILE.kloigos-tmp"
        awk -v add_acct="$add_account" -v add_sess="$add_session" \
            -v amark="$PAM_MARK" -v aline="$PAM_LINE" -v smark="$PAM_SESSION_MARK" -v sline="$PAM_SESSION_LINE" '
            { text[NR] = $0 }
            /^[[:space:]]*@include[[:space:]]+common-account/ { inc = NR }
            /^[[:space:]]*-?account[[:space:]]/ { acct = NR }
            /^[[:space:]]*(@include[[:space:]]+common-session|-?session[[:space:]])/ { sess = NR }
            END {
                a = inc ? inc : (acct ? acct : NR)
                s = sess ? sess : NR
                for (i = 1; i <= NR; i++) {
                    print text[i]
                    if (add_acct && i == a) { print amark; print aline }
                    if (add_sess && i == s) { print smark; print sline }
                }
                if (NR == 0) {
                    if (add_acct) { print amark; print aline }
                    if (add_sess) { print smark; print sline }
                }
            }' "$TMP/sshd.before" >"$PAM_FILE.kloigos-tmp"
        mv -f "$PAM_FILE.kloigos-tmp" "$PAM_FILE"
        [ "$add_account" = 0 ] || say "add '$PAM_LINE' to $PAM_FILE"
        [ "$add_session" = 0 ] || say "add '$PAM_SESSION_LINE' to $PAM_FILE"
        broke=""
        if ! root_gets_in; then
            broke="root no longer passed the sshd account stack"
        elif [ "$session_ok" = 1 ] && ! root_opens_session; then
            broke="root could no longer open a session through the sshd session stack"
        fi
        if [ -z "$broke" ]; then
            if [ "$session_ok" = 1 ]; then
                say "checked with pamtester: root still passes the sshd account stack and opens a session"
            else
                say "checked with pamtester: root still passes the sshd account stack (its session stack refused root before the change too: not checked)"
            fi
            record pam "$PAM_FILE" "$BACKUP" "$(sha "$PAM_FILE")"
        else
            cp -p "$TMP/sshd.before" "$PAM_FILE.kloigos-tmp"
            mv -f "$PAM_FILE.kloigos-tmp" "$PAM_FILE"
            if [ "$made_backup" = 1 ]; then
                rm -f "$BACKUP"
                rmdir "$PAM_BACKUP_DIR" 2>/dev/null || true
            fi
            write_manifest
            die "$broke with pam_kloigos.so: rolled back, $PAM_FILE is as before. pamtester said: $(cat "$TMP/pamtester")"
        fi
    fi
fi

write_manifest
if [ "$DRY_RUN" = 1 ]; then
    say "dry run: nothing was changed"
else
    say "done. Next: 'kloigos doctor' on this node; on the first node only, 'kloigos admin init --admin YOU' and 'kloigos admin add-node $NODE --cpus LIST'"
fi
