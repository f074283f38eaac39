#!/usr/bin/env bash
# deps.sh — install the Debian packages ringmq needs, only those that are missing.
#
# Usage: tools/deps.sh [--fuzz]   (--fuzz adds clang and its libFuzzer runtime)
# Prints what it installs; prints nothing when everything is present.
set -euo pipefail

pkgs=(build-essential pkg-config liburing-dev liblz4-dev libxxhash-dev libcmocka-dev)
if [ "${1:-}" = "--fuzz" ]; then
	pkgs+=(clang libclang-rt-14-dev)
fi

missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps.sh: installing missing packages: ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null || { echo "deps.sh: need root or sudo to install ${missing[*]}" >&2; exit 1; }
	sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Only refresh the package lists when apt cannot find a candidate.
if ! $sudo apt-get install -y --no-install-recommends "${missing[@]}"; then
	$sudo apt-get update -q
	$sudo apt-get install -y --no-install-recommends "${missing[@]}"
fi
