#!/usr/bin/env bash
# Builds the execmesh .deb packages with dpkg-deb from binaries already built:
#
#   deploy/packages/build.sh [--bin-dir DIR] [--out DIR] [--compression xz|zstd|gzip|none]
#
#   --bin-dir      the built binaries [default: $CARGO_TARGET_DIR/release, else target/release]
#                  (`cargo build --release --workspace --bins` builds them)
#   --out          where the packages go [default: the bin dir's ../packages]
#   --compression  dpkg-deb's compressor [default: xz]; the CI check packs with none (fastest)
#
# Writes execmesh-gateway (with execmeshctl), execmesh-node-agent and execmesh-audit-sink,
# versioned as the workspace (Cargo.toml's [workspace.package] version), and prints their paths.
# What each package holds is in deploy/packages/<package>/contents; its control fields in
# <package>/control (Version, Architecture, Depends, Installed-Size are added here); its
# maintainer scripts are <package>/{postinst,prerm,postrm} with common.sh put in. Every file a
# package installs under /etc is a conffile: dpkg never overwrites one the admin edited.
#
# dpkg-deb, not cargo-deb: it is on every Debian machine, needs no build of its own, and the
# packages need nothing cargo-deb adds (the maintainer scripts are ours either way).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/deploy/packages"
PACKAGES=(execmesh-gateway execmesh-node-agent execmesh-audit-sink)

bin_dir="${CARGO_TARGET_DIR:-$root/target}/release"
out=""
compression="xz"
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --compression) compression="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
done
out="${out:-$bin_dir/../packages}"

for tool in dpkg-deb dpkg objdump; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (Debian: dpkg, binutils)" >&2; exit 69; }
done

# The version of the workspace: the first `version = "…"` of [workspace.package].
version="$(sed -n '/^\[workspace.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' "$root/Cargo.toml" | head -n1)"
license="$(sed -n '/^\[workspace.package\]/,/^\[/{s/^license *= *"\(.*\)"/\1/p}' "$root/Cargo.toml" | head -n1)"
[ -n "$version" ] || { echo "build.sh: no version in [workspace.package] of Cargo.toml" >&2; exit 65; }
arch="$(dpkg --print-architecture)"

# glibc_needed BINARY...: the highest GLIBC_x.y symbol version the binaries link against, the
# libc6 they need (what dpkg-shlibdeps would say, without a debian/ directory to run it in).
glibc_needed() {
    objdump -T "$@" | sed -n 's/.*GLIBC_\([0-9][0-9.]*\).*/\1/p' | sort -uV | tail -n1
}

mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for package in "${PACKAGES[@]}"; do
    tree="$work/$package"
    mkdir -p "$tree/DEBIAN"
    binaries=()
    : >"$tree/DEBIAN/conffiles"
    while read -r kind source dest mode; do
        case "$kind" in
            ''|'#'*) continue ;;
            bin)
                [ -f "$bin_dir/$source" ] || { echo "build.sh: $bin_dir/$source is missing: build the workspace binaries first" >&2; exit 66; }
                install -D -m "$mode" "$bin_dir/$source" "$tree$dest"
                # Line tables and symbols are for the developer's build, not the host's disk.
                strip --strip-unneeded "$tree$dest"
                binaries+=("$tree$dest")
                ;;
            file) install -D -m "$mode" "$root/$source" "$tree$dest" ;;
            conf)
                install -D -m "$mode" "$root/$source" "$tree$dest"
                echo "$dest" >>"$tree/DEBIAN/conffiles"
                ;;
            dir) install -d -m "$mode" "$tree$dest" ;;
            *) echo "build.sh: $package/contents: unknown kind $kind" >&2; exit 65 ;;
        esac
    done <"$here/$package/contents"
    [ -s "$tree/DEBIAN/conffiles" ] || rm "$tree/DEBIAN/conffiles"

    install -d "$tree/usr/share/doc/$package"
    printf 'execmesh %s\nLicense: %s\n' "$version" "$license" >"$tree/usr/share/doc/$package/copyright"

    for script in postinst prerm postrm; do
        # The script with common.sh in place of its #EXECMESH_COMMON# line.
        sed -e "/^#EXECMESH_COMMON#\$/{r $here/common.sh" -e 'd}' "$here/$package/$script" >"$tree/DEBIAN/$script"
        chmod 0755 "$tree/DEBIAN/$script"
    done

    size="$(du -sk --exclude=DEBIAN "$tree" | cut -f1)"
    {
        head -n1 "$here/$package/control"
        echo "Version: $version"
        echo "Architecture: $arch"
        echo "Maintainer: execmesh maintainers <execmesh@example.invalid>"
        echo "Installed-Size: $size"
        echo "Depends: libc6 (>= $(glibc_needed "${binaries[@]}")), libgcc-s1, passwd"
        tail -n +2 "$here/$package/control"
    } >"$tree/DEBIAN/control"

    deb="$out/${package}_${version}_${arch}.deb"
    dpkg-deb --root-owner-group -Z"$compression" --build "$tree" "$deb" >/dev/null
    echo "$deb"
done
