#!/usr/bin/env bash
# The device tool carries the working tree (tracked and untracked-not-ignored files) plus carried paths, 64 MiB in all;
# the tracked tree alone is about 61 MB. This takes paths out of what travels for one call and puts them back after:
#   bash tools/device_travel.sh hide models/demo-llava-tiny/model.safetensors tests/fixtures/images/pixels.safetensors
#   ... device call ...
#   bash tools/device_travel.sh restore
# hide = drop from the index (git rm --cached) and ignore via .git/info/exclude; restore = back in the index, exclude
# lines removed. The files themselves never leave the disk, and nothing is committed.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
exclude="$(git rev-parse --git-path info/exclude)"
list="$(git rev-parse --git-path device-travel-hidden)"
case "${1:-}" in
  hide)
    shift
    for p in "$@"; do
      git rm -r -q --cached -- "$p"
      echo "/$p" >> "$exclude"
      echo "$p" >> "$list"
    done ;;
  restore)
    [ -f "$list" ] || exit 0
    while read -r p; do git reset -q -- "$p"; grep -vxF "/$p" "$exclude" > "$exclude.tmp" || true; mv "$exclude.tmp" "$exclude"; done < "$list"
    rm -f "$list" ;;
  *) echo "usage: device_travel.sh hide PATH... | restore" >&2; exit 2 ;;
esac
git status --short | head -5
