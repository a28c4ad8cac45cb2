#!/usr/bin/env bash
# Fails when a tracked C++/CUDA file differs from what clang-format makes of it (.clang-format
# files at the root, kernels/, core/ and tests/kernels/). `--fix` rewrites the files in place.
# The style is pinned to clang-format 14 (Debian 12's, installed by `make test`): other versions
# format some constructs differently, so elsewhere the check is skipped (exit 77, ctest's skip).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=(--dry-run --Werror)
[ "${1:-}" = "--fix" ] && mode=(-i)
if ! command -v clang-format > /dev/null; then
  echo "format check skipped: no clang-format (Debian package clang-format)"; exit 77
fi
version=$(clang-format --version | sed -E 's/.*version ([0-9]+).*/\1/')
if [ "$version" != 14 ]; then
  echo "format check skipped: clang-format $version; the style is pinned to version 14"; exit 77
fi
if ! git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  echo "format check skipped: not a git checkout (the files to check are git's tracked ones)"; exit 77
fi
git ls-files -z '*.cpp' '*.h' '*.cu' '*.cuh' | xargs -0 clang-format --style=file "${mode[@]}"
echo "format: every tracked C++/CUDA file is as clang-format $version writes it"
