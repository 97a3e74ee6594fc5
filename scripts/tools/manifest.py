#!/usr/bin/env python3
"""Write DIR/MANIFEST: how a committed artefact directory was made, so anyone can regenerate it.

    python3 scripts/tools/manifest.py DIR --made-by "COMMAND" --tools "pkg==1.0 ..." --seed 0 [--note TEXT]

Lists every file of DIR (except MANIFEST itself) with its size and sha256. Standard library only.
"""
from __future__ import annotations

import argparse
import hashlib
import os


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: str, made_by: str, tools: str, seed: str, note: str = "") -> str:
    lines = ["made by: " + made_by, "tools: " + tools, "seed: " + seed]
    if note:
        lines.append("note: " + note)
    lines.append("files (sha256, bytes, name):")
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name != "MANIFEST" and os.path.isfile(path):
            lines.append("  {}  {:>9}  {}".format(sha256(path), os.path.getsize(path), name))
    out = os.path.join(directory, "MANIFEST")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("directory")
    ap.add_argument("--made-by", required=True)
    ap.add_argument("--tools", required=True)
    ap.add_argument("--seed", default="-")
    ap.add_argument("--note", default="")
    a = ap.parse_args()
    print(write_manifest(a.directory, a.made_by, a.tools, a.seed, a.note))


if __name__ == "__main__":
    main()
