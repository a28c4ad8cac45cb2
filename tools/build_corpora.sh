#!/usr/bin/env bash
# Rebuilds data/corpora/*.txt.xz from Debian packages (see data/README.md for provenance).
#
#   kjv.txt.xz     King James Bible, printed by `bible` (packages bible-kjv + bible-kjv-text)
#   austen.txt.xz  Jane Austen's six novels, read out of the R data file of r-cran-janeaustenr
#
# Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a temporary
# directory, so nothing is installed and no R is needed: the R lazy-load database is decoded by
# a small reader of R's XDR serialization (below). Output is deterministic (xz -9e, no
# timestamps), so a rebuild from the same package versions reproduces the same bytes.
#
# usage: tools/build_corpora.sh [OUTPUT_DIR]   (default: data/corpora beside this script)
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$here/data/corpora}"
python=/usr/bin/python3
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"  # apt-get download runs as the _apt user when it can
mkdir -p "$out"

(cd "$work" && apt-get download bible-kjv bible-kjv-text r-cran-janeaustenr >/dev/null)
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
root="$work/root"

# --- King James Bible -------------------------------------------------------------------------
# `bible` prints "Book N" headings and "  v text" verses; -l 100000 stops it wrapping lines.
# Each chapter becomes one blank-line-separated block: the heading, then one verse per line.
"$root/usr/bin/bible" -p "$root/usr/lib" -l 100000 "Genesis1:1-Revelation22:21" |
  "$python" -c '
import sys, re
chapters, current = [], None
for line in sys.stdin.read().splitlines():
    if not line.strip():
        continue
    verse = re.match(r"^\s+(\d+) (.*)$", line)
    if verse:
        current.append(verse.group(1) + " " + verse.group(2).strip())
    else:
        current = [line.strip()]
        chapters.append(current)
sys.stdout.write("\n\n".join("\n".join(c) for c in chapters) + "\n")
' >"$work/kjv.txt"

# --- Jane Austen ------------------------------------------------------------------------------
"$python" - "$root/usr/lib/R/site-library/janeaustenr/data/Rdata" >"$work/austen.txt" <<'PY'
import bz2, gzip, lzma, struct, sys, zlib

class Reader:
    """Just enough of R's XDR serialization (format 2/3) for character vectors and named lists."""
    def __init__(self, data): self.b, self.p, self.refs = data, 0, []
    def int(self):
        v = struct.unpack(">i", self.b[self.p:self.p + 4])[0]; self.p += 4; return v
    def read(self):
        assert self.b[:2] == b"X\n", "not an XDR R serialization"
        self.p = 2
        version = self.int(); self.int(); self.int()
        if version == 3: n = self.int(); self.p += n  # native encoding name
        return self.item()
    def item(self):
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (254, 253, 252, 251, 242): return None          # NULL, environments, missing
        if kind == 255: return self.refs[(flags >> 8) - 1]          # reference to an earlier symbol
        if kind == 1:                                               # symbol: its name (CHARSXP)
            name = self.item(); self.refs.append(name); return name
        if kind == 9:                                               # CHARSXP
            n = self.int()
            if n == -1: return None
            s = self.b[self.p:self.p + n]; self.p += n
            return s.decode("utf-8" if flags & (1 << 3) else "latin-1")
        if kind == 2:                                               # pairlist: [(tag, value)]
            out = []
            while True:
                if has_attr: self.item()
                tag = self.item() if has_tag else None
                out.append((tag, self.item()))
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
                if kind == 254: return out
                assert kind == 2, kind
        if kind in (16, 19):                                        # character vector, list
            v = [self.item() for _ in range(self.int())]
        elif kind in (10, 13):                                      # logical, integer
            n = self.int(); v = list(struct.unpack(">%di" % n, self.b[self.p:self.p + 4 * n])); self.p += 4 * n
        elif kind == 14:                                            # double
            n = self.int(); v = list(struct.unpack(">%dd" % n, self.b[self.p:self.p + 8 * n])); self.p += 8 * n
        else:
            raise ValueError("unsupported R type %d" % kind)
        if has_attr:
            attrs = dict(self.item())
            if "names" in attrs: return dict(zip(attrs["names"], v))
        return v

def unserialize(data): return Reader(data).read()

def lazy_load(prefix):
    index = unserialize(gzip.decompress(open(prefix + ".rdx", "rb").read()))
    rdb = open(prefix + ".rdb", "rb").read()
    objects = {}
    for name, (offset, length) in index["variables"].items():
        chunk = rdb[int(offset):int(offset) + int(length)][4:]  # 4-byte uncompressed length
        kind = chunk[:1]
        data = (lzma.decompress(chunk[1:]) if kind == b"Z" else bz2.decompress(chunk[1:]) if kind == b"2"
                else chunk[1:] if kind == b"0" else zlib.decompress(chunk))
        objects[name] = unserialize(data)
    return objects

# Publication order; each novel's lines re-joined into one line per paragraph.
books = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]
objects = lazy_load(sys.argv[1])
paragraphs = []
for name in books:
    current = []
    for line in objects[name]:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current)); current = []
    if current: paragraphs.append(" ".join(current))
sys.stdout.write("\n\n".join(paragraphs) + "\n")
PY

for name in kjv austen; do
  xz -9e --threads=1 --stdout "$work/$name.txt" >"$out/$name.txt.xz.tmp"
  mv "$out/$name.txt.xz.tmp" "$out/$name.txt.xz"
  echo "$name: $(wc -c <"$work/$name.txt") bytes of text, $(wc -c <"$out/$name.txt.xz") compressed, sha256 $(sha256sum "$work/$name.txt" | cut -c1-16)"
done
