#!/usr/bin/env bash
# The whole kloigos test suite: formatting, lints, unit and property tests,
# CLI tests, system tests (as root: PAM through pamtester and a real sshd,
# nftables in network namespaces, killing real processes, setuid install,
# systemd in an nspawn container, kloigos on real NFS in a QEMU guest), then
# the benchmarks, which print ratios against baselines measured in the same
# run.
#
# As root it installs the Debian packages listed in tests/apt-packages.txt
# that are missing. As another user the system tests report SKIPPED, and the
# run ends with their count. With CI=true nothing may be skipped: a test that
# cannot run fails and names what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

step() { printf '\n==> %s\n' "$*"; }

install_packages() {
    if [ "$(id -u)" != 0 ]; then
        echo "not root: system tests will be skipped (run as root for the full suite)"
        return
    fi
    local missing=() pkg
    while read -r pkg; do
        case "$pkg" in '' | '#'*) continue ;; esac
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done <tests/apt-packages.txt
    if [ "${#missing[@]}" -gt 0 ]; then
        step "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

step "packages"
install_packages

step "format (cargo fmt --check)"
cargo fmt --all --check

step "lint (cargo clippy -D warnings)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build"
cargo build --workspace --all-targets --quiet
# Release too, before the tests: the NFS test bed (tests/nfs.rs) runs the
# release binaries in its guest; the benchmarks use them at the end.
cargo build --release --workspace --all-targets --quiet

# Tests that cannot run here append a line to this list (tests/harness/skip.rs).
KLOIGOS_SKIPPED=$(mktemp)
export KLOIGOS_SKIPPED
trap 'rm -f "$KLOIGOS_SKIPPED"' EXIT

step "tests: unit, property, CLI and system"
cargo test --workspace --quiet --no-fail-fast

step "benchmarks (release build; ratios against same-run baselines)"
# Cargo builds where CARGO_TARGET_DIR or its config says, not always ./target.
target_dir=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
"$target_dir/release/bench-cli"
"$target_dir/release/bench-pam"
"$target_dir/release/bench-housekeeper"

skipped=$(wc -l <"$KLOIGOS_SKIPPED")
step "done in $((SECONDS - started)) s: $skipped tests skipped"
if [ "$skipped" -gt 0 ]; then
    cat "$KLOIGOS_SKIPPED"
fi
