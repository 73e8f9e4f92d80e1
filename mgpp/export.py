"""A pruned model that is small on disk: each pruned matrix as a packed bitmask plus its nonzero values.

``python -m mgpp.export <run>/model --out <dir> [--values fp32|fp16|bf16] [--replace]`` writes

* ``model.sparse.safetensors``: for each pruned matrix ``W``, the tensors ``W::mask`` (uint8, one
  bit per element of ``W`` in row-major order, little-endian bit order: element ``i`` is bit
  ``i % 8`` of byte ``i // 8``; 1 = kept) and ``W::values`` (the kept elements in row-major
  order, 1-D, in the ``--values`` dtype); every other tensor under its own name, unchanged;
* ``sparse_manifest.json``: the format and version, and per tensor its shape, dtype, number of
  kept values, N:M pattern when it has one, and CRC-32 checksums of its bytes;
* the model folder's other files (``config.json``, tokenizer files) copied as they are.

:func:`load_sparse` rebuilds the Hugging Face model: with ``--values fp32`` its state dict is
bit-identical to the pruned model's. A matrix counts as pruned when at least ``min_sparsity`` of
it is exactly zero (embeddings, norms and the task head of a pruned model stay dense and keep
their dtype). Every tensor is checked against the manifest on load: a truncated or corrupted file,
or a manifest that does not match the file (a shape, a dtype, a count), fails with a
:class:`SparseFormatError` naming the file and, where it is known, the tensor. A non-empty ``--out``
is refused unless ``--replace``; the export is written beside it and swapped in whole.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .run_folder import SCHEDULE_STATE_FILE

log = logging.getLogger(__name__)

__all__ = ["export_sparse", "load_sparse", "load_sparse_state_dict", "pack", "unpack", "nm_pattern",
           "SparseFormatError", "ExportSummary", "SPARSE_FILE", "MANIFEST_FILE"]

FORMAT = "mgpp-sparse"
VERSION = 1
SPARSE_FILE = "model.sparse.safetensors"
MANIFEST_FILE = "sparse_manifest.json"
MASK, VALUES = "::mask", "::values"
VALUE_DTYPES = {"keep": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
#: Files of a Trainer checkpoint folder that are not part of the model: never copied.
CHECKPOINT_ONLY = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin",
                   "scaler.pt", SCHEDULE_STATE_FILE}


class SparseFormatError(ValueError):
    """A sparse export that cannot be read back as written (truncated, corrupted, inconsistent)."""


# -- packing ---------------------------------------------------------------------------------------
def pack(tensor: torch.Tensor, values_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, values)``: the nonzero pattern of ``tensor`` as packed bits and its nonzeros, row-major."""
    flat = tensor.detach().reshape(-1)
    kept = (flat != 0) | torch.signbit(flat)  # -0.0 is kept as a value: the round trip is exact to the bit
    mask = torch.from_numpy(np.packbits(kept.cpu().numpy(), bitorder="little"))
    values = flat[kept].to(values_dtype or tensor.dtype).contiguous()
    return mask, values


def unpack(mask: torch.Tensor, values: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """The dense tensor of ``shape`` and ``dtype`` that :func:`pack` was given."""
    numel = math.prod(shape)
    kept = torch.from_numpy(np.unpackbits(mask.numpy(), count=numel, bitorder="little").astype(bool))
    out = torch.zeros(numel, dtype=dtype)
    out[kept] = values.to(dtype)
    return out.view(*shape)


def nm_pattern(tensor: torch.Tensor, group_sizes=(2, 4, 8, 16)) -> str | None:
    """``"N:M"`` when every M consecutive elements along the last dimension hold at most N < M nonzeros:
    the sparsest such pattern over ``group_sizes`` (the smaller M on a tie), else None."""
    if tensor.dim() < 2 or tensor.numel() == 0:
        return None
    nonzero = tensor.detach() != 0
    fits = []
    for m in group_sizes:
        if tensor.shape[-1] % m == 0:
            n = int(nonzero.reshape(-1, m).sum(1).max())
            if 0 < n < m:
                fits.append((n / m, m, n))
    if not fits:
        return None
    _, m, n = min(fits)
    return f"{n}:{m}"


def _bytes_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8)


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(_bytes(t))


def _bytes(t: torch.Tensor) -> memoryview:
    t = t.detach().contiguous().cpu().reshape(-1)  # 1-D first: a 0-dim tensor cannot change its element size
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else memoryview(b"")


def _value_dtype(tensor_dtype: torch.dtype, requested: torch.dtype | None) -> torch.dtype:
    """The dtype a matrix's kept values are stored in: the requested one, but never a wider one."""
    if requested is None or torch.finfo(requested).bits > torch.finfo(tensor_dtype).bits:
        return tensor_dtype
    return requested


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise SparseFormatError(f"unknown dtype {name!r} in the manifest")
    return dtype


# -- export ----------------------------------------------------------------------------------------
@dataclass
class ExportSummary:
    out_dir: Path
    dense_bytes: int  #: the model's tensors stored dense (what model.safetensors holds)
    file_bytes: int  #: model.sparse.safetensors
    pruned_dense_bytes: int  #: the pruned matrices stored dense
    pruned_bytes: int  #: the pruned matrices as masks + values
    num_pruned_tensors: int
    pruned_sparsity: float  #: zero fraction over the pruned matrices
    values: str

    def table(self) -> str:
        mib = 1 << 20
        return "\n".join([
            f"wrote {self.out_dir}",
            f"  pruned matrices ({self.num_pruned_tensors}, {self.pruned_sparsity:.1%} zeros, values {self.values}): "
            f"{self.pruned_dense_bytes / mib:.2f} MiB dense -> {self.pruned_bytes / mib:.2f} MiB "
            f"({self.pruned_bytes / max(self.pruned_dense_bytes, 1):.3f}x)",
            f"  whole file (embeddings, norms, biases and head stay dense): {self.dense_bytes / mib:.2f} MiB -> "
            f"{self.file_bytes / mib:.2f} MiB ({self.file_bytes / max(self.dense_bytes, 1):.3f}x)",
        ])


def _weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files ``from_pretrained`` reads: the shards an index names, else model.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names {missing[0]}, which is missing")
        return [model_dir / s for s in shards]
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    if (model_dir / MANIFEST_FILE).is_file():
        raise ValueError(f"{model_dir} is already a sparse export; load it with mgpp.load_sparse")
    raise FileNotFoundError(f"no model.safetensors (or sharded index) in {model_dir}: save the model with "
                            "save_pretrained, or give the model itself to export_sparse")


def read_state_dict(model_dir) -> dict[str, torch.Tensor]:
    """Every tensor of a saved Hugging Face model folder (``model.safetensors`` or the shards its index names)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(Path(model_dir)):
        state.update(load_file(str(f)))
    return state


def _state_dict_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors, each shared (tied) storage once, as save_pretrained writes them."""
    state, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:
            continue
        seen.add(key)
        state[name] = t.detach().cpu()
    return state


def _check_out_dir(out_dir: Path, model_dir: Path | None, replace: bool) -> None:
    """Refuse an ``out_dir`` that holds anything (unless ``replace``), or whose replacement would delete
    the model being exported."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is a file, not a folder")
    if model_dir is not None:
        if out_dir.resolve() == model_dir.resolve():
            raise ValueError("--out must be a different folder from the model's")
        if replace and model_dir.resolve().is_relative_to(out_dir.resolve()):
            raise ValueError(f"the model folder {model_dir} is inside --out {out_dir}: replacing --out would delete "
                             "it; choose another --out")
    held = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if held and not replace:
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise FileExistsError(f"--out {out_dir} is not empty (it holds {shown}): choose another folder, or replace "
                              "it whole with --replace (replace=True)")


def _swap_in(new: Path, out_dir: Path) -> None:
    """Put the finished folder ``new`` (a sibling of ``out_dir``) in ``out_dir``'s place, whatever was there
    moved aside first and deleted last: no file of an old export survives beside the new one."""
    if not out_dir.exists():
        new.rename(out_dir)
        return
    aside = new.with_name(new.name.replace(".partial-", ".old-"))
    out_dir.rename(aside)
    try:
        new.rename(out_dir)
    except BaseException:
        aside.rename(out_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def export_sparse(source, out_dir, values: str = "keep", min_sparsity: float = 0.2,
                  replace: bool = False) -> ExportSummary:
    """Write ``source`` (a model folder saved by ``save_pretrained`` or a ``PreTrainedModel``) to
    ``out_dir`` in the sparse format. Matrices with at least ``min_sparsity`` exact zeros are stored
    as mask + values; the rest unchanged. ``values``: ``keep`` (each matrix's own dtype: exact),
    or ``fp16``/``bf16``/``fp32`` to round the kept values to it (never widening a narrower dtype;
    a value that overflows the narrower dtype is refused, naming the tensor).

    An ``out_dir`` that holds anything is refused unless ``replace``; the export is written into a
    temporary sibling folder and swapped in whole once complete, so a failed export leaves ``out_dir``
    as it was and a replaced one keeps no file of the old."""
    import uuid

    if values not in VALUE_DTYPES:
        raise ValueError(f"values must be one of {sorted(VALUE_DTYPES)}, got values={values!r}")
    if not 0.0 < min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must lie in (0, 1], got min_sparsity={min_sparsity}")
    out_dir = Path(out_dir)
    model_dir = None if isinstance(source, torch.nn.Module) else Path(source)
    if model_dir is not None and not model_dir.is_dir():
        raise FileNotFoundError(f"no model folder at {model_dir}")
    _check_out_dir(out_dir, model_dir, replace)
    target = out_dir.resolve()  # `--out .` has no parent or name of its own to stage beside
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        summary = _write_export(source, model_dir, staging, values, min_sparsity)
        _swap_in(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.out_dir = out_dir
    return summary


def _write_export(source, model_dir: Path | None, out_dir: Path, values: str, min_sparsity: float) -> ExportSummary:
    from safetensors.torch import save_file

    state = _state_dict_of(source) if model_dir is None else read_state_dict(model_dir)
    tensors, manifest = {}, {}
    dense_bytes = pruned_dense = pruned_bytes = zeros = pruned_numel = 0
    for name, t in state.items():
        if MASK in name or VALUES in name:
            raise ValueError(f"tensor name {name!r} contains a reserved suffix ({MASK} or {VALUES})")
        t = t.detach().contiguous().cpu()
        nbytes = t.numel() * t.element_size()
        dense_bytes += nbytes
        entry = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype)}
        num_zeros = int(((t == 0) & ~torch.signbit(t)).sum()) if t.is_floating_point() and t.dim() >= 2 else 0
        if t.numel() and num_zeros >= min_sparsity * t.numel():
            mask, kept = pack(t, _value_dtype(t.dtype, VALUE_DTYPES[values]))
            if not bool(torch.isfinite(kept).all()) and bool(torch.isfinite(t).all()):
                raise ValueError(f"tensor {name!r}: a kept value overflows {values}; export with --values keep")
            tensors[name + MASK], tensors[name + VALUES] = mask, kept
            entry |= {"stored": "mask+values", "values_dtype": _dtype_name(kept.dtype), "nnz": kept.numel(),
                      "pattern": nm_pattern(t), "crc32_mask": _crc(mask), "crc32_values": _crc(kept)}
            pruned_dense += nbytes
            pruned_bytes += mask.numel() + kept.numel() * kept.element_size()
            zeros += num_zeros
            pruned_numel += t.numel()
        else:
            tensors[name] = t
            entry |= {"stored": "dense", "crc32": _crc(t)}
        manifest[name] = entry

    num_pruned = sum(e["stored"] != "dense" for e in manifest.values())
    if num_pruned == 0:
        warnings.warn(f"no matrix of the model has {min_sparsity:.0%} or more exact zeros: it does not look pruned, "
                      "so every tensor is stored dense (the export is correct but no smaller)", stacklevel=3)
    save_file(tensors, str(out_dir / SPARSE_FILE), metadata={"format": FORMAT, "version": str(VERSION)})
    with open(out_dir / MANIFEST_FILE, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "version": VERSION, "values": values, "min_sparsity": min_sparsity,
                   "tensors": manifest}, f, indent=1)
    if model_dir is not None:
        for f in model_dir.iterdir():
            if f.is_file() and f.suffix not in (".safetensors", ".bin", ".pt", ".pth") \
                    and f.name not in CHECKPOINT_ONLY and f.name != "model.safetensors.index.json":
                shutil.copy2(f, out_dir / f.name)
    else:
        config = getattr(source, "config", None)
        if config is not None:  # as save_pretrained writes it: naming the class load_sparse rebuilds
            config = copy.deepcopy(config)
            config.architectures = [type(source).__name__]
            config.save_pretrained(str(out_dir))
    return ExportSummary(out_dir, dense_bytes, (out_dir / SPARSE_FILE).stat().st_size, pruned_dense, pruned_bytes,
                         num_pruned, zeros / max(pruned_numel, 1), values)


# -- load ------------------------------------------------------------------------------------------
#: bytes per element of each safetensors dtype (None: less than a byte)
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F8_E4M3FNUZ": 1,
                      "F8_E5M2FNUZ": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
                      "C64": 8, "F64": 8, "I64": 8, "U64": 8, "F4": None, "F6_E2M3": None, "F6_E3M2": None}


def _tensor_of(key: str) -> str:
    return key.split("::")[0]


def _named(key: str) -> str:
    """``tensor 'W' (W::mask)`` for a stored part of a pruned matrix, ``tensor 'b'`` for a dense tensor."""
    return f"tensor {_tensor_of(key)!r}" + (f" ({key})" if "::" in key else "")


def _is_counts(value, length: int | None = None) -> bool:
    """A list of non-negative ints (of ``length`` when given)."""
    return isinstance(value, list) and (length is None or len(value) == length) and \
        all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def _safetensors_extents(path: Path) -> dict[str, tuple[int, int]]:
    """Where each tensor's bytes lie in a safetensors file, from its header (8-byte length + JSON), every
    entry checked (dtype, shape, offsets, and that the bytes the shape needs are the bytes it has)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SparseFormatError(f"{path} is truncated: {size} bytes, not even a safetensors header")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8:
            raise SparseFormatError(f"{path} is truncated or not a safetensors file: its header claims "
                                    f"{header_len} bytes, the file has {size}")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as err:
            raise SparseFormatError(f"{path}: the safetensors header is corrupted ({err})") from None
    if not isinstance(header, dict):
        raise SparseFormatError(f"{path}: the safetensors header is corrupted (not a JSON object)")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise SparseFormatError(f"{path}: the safetensors header's metadata is {metadata!r}, not an {FORMAT} file's")
    start = 8 + header_len
    extents = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        where = f"{path}: {_named(key)} in the safetensors header"
        if not isinstance(entry, dict) or entry.keys() != {"dtype", "shape", "data_offsets"}:
            raise SparseFormatError(f"{where} is corrupted (not a dtype, shape and data_offsets entry)")
        if entry["dtype"] not in SAFETENSORS_DTYPES:
            raise SparseFormatError(f"{where} has dtype {entry['dtype']!r}, which is not a safetensors dtype")
        if not _is_counts(entry["shape"]) or not _is_counts(entry["data_offsets"], 2) or \
                entry["data_offsets"][0] > entry["data_offsets"][1]:
            raise SparseFormatError(f"{where} is corrupted (shape {entry['shape']!r}, data_offsets "
                                    f"{entry['data_offsets']!r})")
        begin, end = entry["data_offsets"]
        item = SAFETENSORS_DTYPES[entry["dtype"]]
        if item is not None and end - begin != math.prod(entry["shape"]) * item:
            raise SparseFormatError(f"{where} is corrupted: {entry['dtype']} of shape {entry['shape']} needs "
                                    f"{math.prod(entry['shape']) * item} bytes, its data_offsets give {end - begin}")
        extents[key] = (start + begin, start + end)
    for key, (_, end) in sorted(extents.items(), key=lambda kv: kv[1]):
        if end > size:
            raise SparseFormatError(f"{path} is truncated: {_named(key)} needs bytes up to "
                                    f"{end}, the file ends at {size}")
    return extents


def _read_json(path: Path, what: str):
    """A JSON file, its damage named (file, line, column) as a :class:`SparseFormatError`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise SparseFormatError(f"{path} is not valid JSON: not UTF-8 text (byte offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise SparseFormatError(f"{path} is not valid JSON ({what}; line {err.lineno}, column {err.colno}: "
                                f"{err.msg})") from None


#: what a manifest entry holds, by how the tensor is stored
_ENTRY_KEYS = {"dense": ("shape", "dtype", "crc32"),
               "mask+values": ("shape", "dtype", "values_dtype", "nnz", "crc32_mask", "crc32_values")}


def read_manifest(export_dir) -> dict:
    path = Path(export_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_FILE} in {export_dir}: not a sparse export (python -m mgpp.export)")
    manifest = _read_json(path, "the export's manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        found = manifest if not isinstance(manifest, dict) else f"{manifest.get('format')!r} version " \
            f"{manifest.get('version')!r}"
        raise SparseFormatError(f"{path} is format {found}; this mgpp reads {FORMAT!r} version {VERSION}")
    if manifest.get("values", "keep") not in VALUE_DTYPES:
        raise SparseFormatError(f"{path}: values {manifest.get('values')!r} is not one of {sorted(VALUE_DTYPES)}")
    if not isinstance(manifest.get("tensors"), dict):
        raise SparseFormatError(f"{path}: no 'tensors' table")
    for name, entry in manifest["tensors"].items():
        stored = entry.get("stored") if isinstance(entry, dict) else None
        if stored not in _ENTRY_KEYS:
            raise SparseFormatError(f"{path}: tensor {name!r} is stored {stored!r}, not one of {sorted(_ENTRY_KEYS)}")
        for key in _ENTRY_KEYS[stored]:
            if key not in entry:
                raise SparseFormatError(f"{path}: tensor {name!r} has no {key!r}")
        if not _is_counts(entry["shape"]):
            raise SparseFormatError(f"{path}: tensor {name!r} has shape {entry['shape']!r}, not a list of sizes")
    return manifest


def _manifest_dtype(export_dir: Path, name: str, value) -> torch.dtype:
    dtype = getattr(torch, value, None) if isinstance(value, str) else None
    if not isinstance(dtype, torch.dtype):
        raise SparseFormatError(f"{export_dir / MANIFEST_FILE}: tensor {name!r} has unknown dtype {value!r}")
    return dtype


def load_sparse_state_dict(export_dir) -> dict[str, torch.Tensor]:
    """The dense state dict of a sparse export, every tensor checked against the manifest (its shape,
    dtype, kept count and checksums); any damage is a :class:`SparseFormatError` naming the file and,
    where it is known, the tensor."""
    from safetensors import safe_open

    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    requested = VALUE_DTYPES[manifest.get("values", "keep")]
    manifest = manifest["tensors"]
    path = export_dir / SPARSE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    extents = _safetensors_extents(path)
    expected = set()
    for name, entry in manifest.items():
        expected |= {name + MASK, name + VALUES} if entry["stored"] != "dense" else {name}
    if extents.keys() != expected:
        extra, missing = sorted(extents.keys() - expected), sorted(expected - extents.keys())
        what = f"tensor {missing[0]!r} is in the manifest but not in the file" if missing else \
            f"tensor {extra[0]!r} is in the file but not in the manifest"
        raise SparseFormatError(f"{export_dir}: the manifest does not match {SPARSE_FILE}: {what}")

    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as err:  # the safetensors library's own error (SafetensorError): the file, named
        raise SparseFormatError(f"{path} is not a readable safetensors file ({err})") from None

    def read(key: str) -> torch.Tensor:
        try:
            return handle.get_tensor(key)
        except Exception as err:
            raise SparseFormatError(f"{path}: {_named(key)} cannot be read ({err})") from None

    state = {}
    with handle as f:
        for name, entry in manifest.items():
            shape, dtype = tuple(entry["shape"]), _manifest_dtype(export_dir, name, entry["dtype"])
            if entry["stored"] == "dense":
                t = read(name)
                if tuple(t.shape) != shape or t.dtype != dtype:
                    raise SparseFormatError(f"{path}: tensor {name!r}: the file holds {tuple(t.shape)} {t.dtype}, the "
                                            f"manifest says {shape} {dtype}")
                if _crc(t) != entry["crc32"]:
                    raise SparseFormatError(f"{path}: tensor {name!r} is corrupted (CRC-32 mismatch)")
                state[name] = t
                continue
            mask, kept = read(name + MASK), read(name + VALUES)
            numel = math.prod(shape)
            if mask.dtype != torch.uint8 or mask.dim() != 1 or mask.numel() != (numel + 7) // 8:
                raise SparseFormatError(f"{path}: tensor {name!r}: its mask holds {mask.numel()} bytes of "
                                        f"{mask.dtype}, shape {shape} needs {(numel + 7) // 8} bytes of uint8")
            values_dtype = _manifest_dtype(export_dir, name, entry["values_dtype"])
            if kept.dtype != values_dtype:
                raise SparseFormatError(f"{path}: tensor {name!r}: its values are {_dtype_name(kept.dtype)}, the "
                                        f"manifest says {_dtype_name(values_dtype)}")
            if kept.dim() != 1:
                raise SparseFormatError(f"{path}: tensor {name!r}: its values have shape {tuple(kept.shape)}, not 1-D")
            # an export stores a matrix's own dtype (values=keep), or the requested one, never wider
            if not dtype.is_floating_point or _value_dtype(dtype, requested) != values_dtype:
                raise SparseFormatError(
                    f"{export_dir / MANIFEST_FILE}: tensor {name!r}: the manifest says {_dtype_name(dtype)} with {_dtype_name(values_dtype)} values "
                    f"(values={manifest_values(requested)}), which no export writes: the manifest was edited or "
                    "damaged")
            if _crc(mask) != entry["crc32_mask"] or _crc(kept) != entry["crc32_values"]:
                raise SparseFormatError(f"{path}: tensor {name!r} is corrupted (CRC-32 mismatch of its "
                                        f"{'mask' if _crc(mask) != entry['crc32_mask'] else 'values'})")
            ones = int(np.unpackbits(mask.numpy(), count=numel, bitorder="little").sum())
            if not ones == kept.numel() == entry["nnz"]:
                raise SparseFormatError(f"{path}: tensor {name!r}: its mask keeps {ones} elements, it has "
                                        f"{kept.numel()} values, the manifest says {entry['nnz']}")
            state[name] = unpack(mask, kept, shape, dtype)
    return state


def manifest_values(requested: torch.dtype | None) -> str:
    """The ``--values`` name of a requested values dtype."""
    return next(k for k, v in VALUE_DTYPES.items() if v == requested)


def load_sparse(export_dir, model_class=None, dtype: torch.dtype | None = None, **kwargs):
    """The Hugging Face model of a sparse export (``config.json`` names its class in ``architectures``;
    or pass ``model_class``), in the dtype it was exported in unless ``dtype`` is given. Its state dict
    equals the exported model's bit for bit (kept values rounded by ``--values`` aside); a tensor the
    model expects but the export lacks, or the reverse, is an error, never a random initialisation."""
    import transformers
    from transformers import AutoConfig

    export_dir = Path(export_dir)
    state = load_sparse_state_dict(export_dir)
    config_file = export_dir / "config.json"
    if config_file.is_file():
        _read_json(config_file, "the model's config")  # damage named here, not as the config class's OSError
    try:  # an export never runs a model folder's own code (auto_map): load_sparse rebuilds a transformers class
        if model_class is None:
            config = AutoConfig.from_pretrained(str(export_dir), trust_remote_code=False)
        else:
            config = model_class.config_class.from_pretrained(str(export_dir))
    except (OSError, ValueError) as err:
        raise SparseFormatError(f"{config_file}: not a config transformers can read ({err})") from None
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, names[0], None) if names else None
        if model_class is None:
            raise ValueError(f"{export_dir}/config.json names no transformers class in 'architectures' ({names}); "
                             "pass model_class=, e.g. transformers.BertForSequenceClassification")
    floating = [t.dtype for t in state.values() if t.is_floating_point()]
    target = dtype or (max(set(floating), key=floating.count) if floating else torch.float32)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model, info = model_class.from_pretrained(None, config=config, state_dict=state, dtype=target,
                                              output_loading_info=True, **kwargs)
    missing, unexpected = list(info.get("missing_keys", [])), list(info.get("unexpected_keys", []))
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"holds {unexpected[0]!r}, which the model has no place for"
        raise SparseFormatError(f"{export_dir} does not fit {model_class.__name__}: the export {what} "
                                f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return model.eval()


# -- command line ----------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mgpp.export",
        description="Write a pruned model as packed bitmasks plus nonzero values (mgpp's sparse format); "
                    "mgpp.load_sparse(dir) loads it back as a Hugging Face model.")
    parser.add_argument("model_dir", help="the pruned model's folder (a run's model/, or a checkpoint-N/)")
    parser.add_argument("--out", required=True, help="folder to write: a new or empty one, unless --replace")
    parser.add_argument("--replace", action="store_true",
                        help="replace --out if it already holds files: the export is written into a temporary "
                             "folder beside it and swapped in whole, so no file of what was there is left (without "
                             "--replace a non-empty --out is refused)")
    parser.add_argument("--values", choices=list(VALUE_DTYPES), default="keep",
                        help="dtype of the kept values: keep (each matrix's own: bit-exact), or fp16/bf16 (half "
                             "the bytes of fp32, rounded) or fp32; never wider than the matrix's own")
    parser.add_argument("--min-sparsity", type=float, default=0.2,
                        help="a matrix with at least this fraction of exact zeros is stored sparse (default 0.2)")
    parser.add_argument("--no-check", action="store_true", help="skip reloading the export to check it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = export_sparse(args.model_dir, args.out, values=args.values, min_sparsity=args.min_sparsity,
                                replace=args.replace)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary.table())
    if not args.no_check:
        try:
            reloaded = load_sparse_state_dict(args.out)
        except (OSError, ValueError) as err:
            print(f"error: the export does not load back: {err}", file=sys.stderr)
            return 1
        manifest = read_manifest(args.out)["tensors"]
        original = read_state_dict(Path(args.model_dir))
        rounded = []
        for name, tensor in original.items():
            entry = manifest.get(name, {})
            stored = _dtype(entry["values_dtype"]) if entry.get("stored") == "mask+values" else tensor.dtype
            if name not in reloaded or not torch.equal(_bytes_tensor(reloaded[name]),
                                                       _bytes_tensor(tensor.to(stored).to(tensor.dtype))):
                print(f"error: tensor {name!r} does not reload as it was written", file=sys.stderr)
                return 1
            if stored != tensor.dtype:
                rounded.append(name)
        print(f"  reloaded: {len(reloaded)} tensors, " + (
            f"bit-identical except the kept values of {len(rounded)} matrices, rounded to {args.values}" if rounded
            else "bit-identical to the model"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
