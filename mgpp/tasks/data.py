"""Where task data comes from: the local data root, local files, fixed subsets."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_DIR", "find_data_dir", "resolve_data_file", "subset"]

#: Environment variable naming the data root (holding glue/, squad/, summarization/ ...).
ENV_DIR = "MGPP_DATA_DIR"


def find_data_dir(kind: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local folder for ``kind`` (``glue``, ``squad``, ``summarization``), or None for "use the hub".

    Looks in ``data_dir`` (the data root, or that kind's folder itself), else ``$MGPP_DATA_DIR``,
    else a ``shared/data`` (or ``data``) beside or above the working directory or this checkout.
    """
    if data_dir or os.environ.get(ENV_DIR):
        root = Path(data_dir or os.environ[ENV_DIR]).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {str(root)!r} (data_dir / ${ENV_DIR}) does not exist")
        return root / kind if (root / kind).is_dir() else root
    here = Path(__file__).resolve().parents[2]  # the checkout holding mgpp/
    for base in dict.fromkeys([Path.cwd(), *Path.cwd().parents[:2], here, here.parent]):
        for candidate in (base / "shared" / "data" / kind, base / "data" / kind):
            if candidate.is_dir():
                return candidate
    return None


def resolve_data_file(path: str, data_dir: str | None = None) -> str:
    """``path`` as given if it exists, else relative to the data root (``data_dir``, ``$MGPP_DATA_DIR``, shared/data)."""
    if Path(path).expanduser().exists():
        return str(Path(path).expanduser())
    root = find_data_dir("", data_dir)
    if root is not None and (root / path).exists():
        return str(root / path)
    raise FileNotFoundError(f"data file {path!r} not found (as given, or under the data root {root})")


def subset(dataset, n: int | None, seed: int):
    """A fixed, seeded subset of ``n`` examples (all of them when ``n`` is None)."""
    return dataset.shuffle(seed=seed).select(range(min(n, len(dataset)))) if n else dataset
