"""Where task data comes from: the local data root, local files, fixed subsets; and reading local text
files so that every fault is named by file, line and absolute byte offset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

__all__ = ["ENV_DIR", "MAX_FIELD_CHARS", "find_data_dir", "resolve_data_file", "subset", "text_lines", "line_offset",
           "read_text", "find_bad_line"]

#: Environment variable naming the data root (holding glue/, squad/, summarization/ ...).
ENV_DIR = "MGPP_DATA_DIR"

#: The longest field a local TSV file may hold, in characters (16 MiB; Python's csv module stops at
#: 131,072 by default). A longer field is an error naming the file and line: most likely not a TSV file.
MAX_FIELD_CHARS = 16 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


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


def _not_utf8(path, line: int, offset: int, byte: int, reason: str) -> ValueError:
    return ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{byte:02x} at byte offset {offset}: {reason})")


def text_lines(path: str | os.PathLike, bom: bool = True) -> Iterator[tuple[int, int, str]]:
    """``(line number, byte offset of the text's first byte, text)`` for each line of a UTF-8 file, a leading BOM
    dropped (kept as U+FEFF with ``bom=False``). Lines end where Python's universal newlines end them (LF,
    CR LF, a lone CR) and keep their ending. A byte that is not UTF-8 raises a ValueError naming the file,
    the line and the byte's offset from the start of the file (not from the start of a read buffer)."""
    number = offset = 0
    with open(path, "rb") as f:
        for chunk in f:  # chunks end at LF; no UTF-8 sequence holds an LF or CR byte, so splitting is safe
            for raw in chunk.splitlines(keepends=True):
                number += 1
                start = len(_BOM) if bom and number == 1 and raw.startswith(_BOM) else 0
                try:
                    text = raw[start:].decode("utf-8")
                except UnicodeDecodeError as err:
                    at = start + err.start
                    raise _not_utf8(path, number, offset + at, raw[at], err.reason) from None
                yield number, offset + start, text  # the text's first byte: after a dropped BOM
                offset += len(raw)


def line_offset(path: str | os.PathLike, line: int) -> int:
    """The byte offset at which 1-based ``line`` of a text file starts (lines as :func:`text_lines` counts
    them), for naming a fault found after the file was read."""
    for number, offset, _ in text_lines(path):
        if number == line:
            return offset
    return os.path.getsize(path)


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 file as text; a byte that is not UTF-8 is named by line and absolute byte offset."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:  # err.start counts from the start of the file here
        raise _not_utf8(path, data.count(b"\n", 0, err.start) + 1, err.start, data[err.start], err.reason) from None


def find_bad_line(path: str | os.PathLike, json_lines: bool = False) -> str | None:
    """What is wrong with a text file (each line a JSON value with ``json_lines``), naming the file, the
    line and the byte offset; None when nothing is. For saying where a library's reader failed."""
    import json

    try:
        for number, offset, text in text_lines(path):
            if json_lines and text.strip():
                try:
                    json.loads(text)
                except json.JSONDecodeError as err:
                    at = offset + len(text[: err.pos].encode("utf-8"))
                    return f"{path}, line {number}: not JSON ({err.msg}, column {err.colno}; at byte offset {at})"
    except ValueError as err:
        return str(err)
    return None
