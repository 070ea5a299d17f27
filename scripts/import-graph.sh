#!/usr/bin/env bash
# The import graph of the application crate's top-level modules (src/), drawn from the
# `crate::…` paths in non-test code, and any circle in it. Exit status 1 when there is a circle.
# Between crates the compiler keeps the floors; inside src/ this script does
# (docs/ARCHITECTURE.md says which way each arrow may point).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import collections, glob, os, re, sys

# The binary's modules and the crates re-exported under old names are not floors of src/.
skip = {"main", "cli", "commands", "lib"}
reexported = {"squashfs", "archive", "sandbox", "root", "s3"}
arrows = collections.defaultdict(set)
for path in glob.glob("src/**/*.rs", recursive=True):
    top = os.path.relpath(path, "src").split("/")[0].removesuffix(".rs")
    if top in skip or "tests" in os.path.basename(path):
        continue
    text = open(path).read().split("#[cfg(test)]\nmod tests")[0]
    text = "\n".join(l for l in text.split("\n") if not l.strip().startswith("//"))
    for used in re.findall(r"crate::([a-z_0-9]+)", text):
        if used != top and used not in reexported:
            arrows[top].add(used)

def reaches(a, b, seen):
    for n in arrows.get(a, ()):
        if n == b or (n not in seen and (seen.add(n) or reaches(n, b, seen))):
            return True
    return False

for module in sorted(arrows):
    print(f"{module} -> {', '.join(sorted(arrows[module]))}")
circles = sorted({tuple(sorted((a, b))) for a in arrows for b in arrows[a] if reaches(b, a, set())})
for a, b in circles:
    print(f"CIRCLE: {a} <-> {b}")
sys.exit(1 if circles else 0)
PY
