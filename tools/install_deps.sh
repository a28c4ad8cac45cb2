#!/usr/bin/env bash
# Installs the Debian packages the build needs when any is missing (`make demo`, `make test` and
# `make` run this first): as root with apt-get; otherwise it names the missing packages and the
# command that installs them, and fails. Quiet when everything is there.
# Usage: tools/install_deps.sh PACKAGE...
set -euo pipefail
if ! command -v dpkg-query > /dev/null; then
  echo "minitron: not a Debian-based system (no dpkg-query); make sure these are installed: $*" >&2
  exit 0
fi
missing=()
for package in "$@"; do
  dpkg-query -W -f='${Status}' "$package" 2> /dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "minitron: missing Debian packages: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
