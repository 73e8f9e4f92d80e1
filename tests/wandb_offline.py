"""Reads an offline W&B run file (``run-<id>.wandb``) for tests: the SDK has no Python reader any more.

The file is a 7-byte header (``:W&B``, magic, version) followed by LevelDB-log records in 32 KiB
blocks (4-byte checksum, 2-byte little-endian length, 1-byte type: full/first/middle/last), each
record a serialized ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a record header is padding
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def summary(path: str | Path) -> dict:
    """The run record's name/group/job type/tags, and every history key logged."""
    run, keys = None, set()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return {"name": run.display_name, "group": run.run_group, "job_type": run.job_type, "tags": list(run.tags),
            "keys": keys}


def history(path: str | Path) -> dict[int, dict]:
    """``{step: {key: value}}`` of every history record (numbers only; histograms and tables left out)."""
    import json

    rows: dict[int, dict] = {}
    for record in records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
        step = int(json.loads(items.pop("_step", "0")))
        for key, raw in items.items():
            value = json.loads(raw)
            if isinstance(value, (int, float)) and not key.startswith("_"):
                rows.setdefault(step, {})[key] = value
    return rows
