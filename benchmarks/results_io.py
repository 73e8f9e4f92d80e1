"""Where every benchmark's numbers land: one JSON file for machines and one Markdown file for the
README and experiments/, side by side, so a benchmark's printed numbers and its committed ones agree."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out_dir: str | Path, stem: str, data, markdown: str, indent: int = 1) -> Path:
    """Write ``<out_dir>/<stem>.json`` and ``<out_dir>/<stem>.md``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=indent) + "\n")
    (out / f"{stem}.md").write_text(markdown.rstrip("\n") + "\n")
    return out
