#!/usr/bin/env bash
# tools/install_deps.sh, which `make demo` and `make test` run first: quiet when every package is
# there; for a user who is not root, one line naming the missing packages and the command that
# installs them, and a failure (nothing is installed). Run as root, the not-root case drops to
# nobody with setpriv (skipped, exit 77, where that is impossible).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
script="$root/tools/install_deps.sh"
command -v dpkg-query > /dev/null || { echo "skipped: not a Debian system"; exit 77; }

# Installed packages (these tests run because of them): nothing printed, success.
out=$(bash "$script" bash coreutils 2>&1) || { echo "FAIL: installed packages failed: $out"; exit 1; }
[ -z "$out" ] || { echo "FAIL: installed packages printed: $out"; exit 1; }

as_user=()
if [ "$(id -u)" -eq 0 ]; then
  command -v setpriv > /dev/null || { echo "skipped: root without setpriv"; exit 77; }
  as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
fi
missing=minitron-no-such-package
if out=$("${as_user[@]}" bash "$script" bash "$missing" 2>&1); then
  echo "FAIL: a missing package as a user who is not root succeeded: $out"; exit 1
fi
expected="minitron: missing Debian packages: $missing; install them with: sudo apt-get install -y $missing"
[ "$out" = "$expected" ] || { printf 'FAIL: got\n  %s\nexpected\n  %s\n' "$out" "$expected"; exit 1; }
echo "install_deps: quiet when installed; one line and a failure for a missing package without root"
