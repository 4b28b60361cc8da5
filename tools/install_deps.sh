#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages Inference-PIO builds and tests with, when missing.
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail
packages=(build-essential pkg-config libyaml-dev libjansson-dev libpcre2-dev libutf8proc-dev
          libcmocka-dev libmicrohttpd-dev libjpeg-dev libpng-dev binutils python3
          clang libclang-rt-dev)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
        missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
