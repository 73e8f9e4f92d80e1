"""GLUE tasks: from a local folder in the original GLUE TSV layout, or from the Hugging Face hub.

Local files are read the way the GLUE/transformers processors read them: tab-separated,
quoting off (fields hold bare ``"``), CoLA train/dev without a header, MRPC with a BOM.
Rows come out with the hub's column names and label ids, so everything downstream is
the same whichever source was used.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict

from . import data
from .data import ENV_DIR, find_data_dir, line_offset, text_lines

log = logging.getLogger(__name__)

__all__ = ["GlueLayout", "LAYOUTS", "find_glue_dir", "load_glue"]

@dataclass(frozen=True)
class GlueLayout:
    """Where a task's fields sit in its GLUE TSV files and how labels map to the hub's ids."""

    folder: str
    #: hub column name -> TSV header name (or column index for header-less files)
    text: dict[str, str | int]
    label: str | int
    header: bool = True
    #: string label -> hub id; None: labels are numbers already (int, or float for STS-B)
    label_ids: dict[str, int] | None = None
    regression: bool = False
    #: hub split name -> file name
    files: dict[str, str] = field(default_factory=lambda: {"train": "train.tsv", "validation": "dev.tsv"})


NLI3 = {"entailment": 0, "neutral": 1, "contradiction": 2}
NLI2 = {"entailment": 0, "not_entailment": 1}

LAYOUTS: dict[str, GlueLayout] = {
    "cola": GlueLayout("CoLA", {"sentence": 3}, label=1, header=False),
    "sst2": GlueLayout("SST-2", {"sentence": "sentence"}, label="label"),
    # MRPC's labelled test set (1,725 pairs, disjoint from train and dev) is in the original MSR release
    "mrpc": GlueLayout("MRPC", {"sentence1": "#1 String", "sentence2": "#2 String"}, label="Quality",
                       files={"train": "train.tsv", "validation": "dev.tsv",
                              "test": "original/msr_paraphrase_test.txt"}),
    "qqp": GlueLayout("QQP", {"question1": "question1", "question2": "question2"}, label="is_duplicate"),
    "stsb": GlueLayout("STS-B", {"sentence1": "sentence1", "sentence2": "sentence2"}, label="score",
                       regression=True),
    "mnli": GlueLayout("MNLI", {"premise": "sentence1", "hypothesis": "sentence2"}, label="gold_label",
                       label_ids=NLI3,
                       files={"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                              "validation_mismatched": "dev_mismatched.tsv"}),
    "qnli": GlueLayout("QNLI", {"question": "question", "sentence": "sentence"}, label="label", label_ids=NLI2),
    "rte": GlueLayout("RTE", {"sentence1": "sentence1", "sentence2": "sentence2"}, label="label", label_ids=NLI2),
    "wnli": GlueLayout("WNLI", {"sentence1": "sentence1", "sentence2": "sentence2"}, label="label"),
}


def find_glue_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    return find_data_dir("glue", data_dir)


def _num_classes(layout: GlueLayout) -> int:
    return len(layout.label_ids) if layout.label_ids else 3 if layout.folder == "MNLI" else 2


@contextlib.contextmanager
def _field_limit(limit: int):
    """csv's process-wide field limit raised to ``limit`` while a file is read, then put back."""
    before = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _tsv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` for each line of a TSV file (quoting off, a BOM dropped), fields of up to
    :data:`~mgpp.tasks.data.MAX_FIELD_CHARS` characters. A fault names the file, the line and the byte
    offset from the start of the file (found by a second, slower read once something is wrong)."""
    limit = data.MAX_FIELD_CHARS
    with _field_limit(limit), open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)  # quoting off: a row is one line
        try:
            return list(enumerate(reader, start=1))
        except UnicodeDecodeError:
            for _ in text_lines(path):  # raises naming the line and the byte's offset in the file
                pass
            raise
        except csv.Error as err:
            line = reader.line_num
            what = f"a field longer than {limit:,} characters (mgpp.tasks.data.MAX_FIELD_CHARS; is it a TSV " \
                   "file?)" if "field limit" in str(err) else f"not TSV ({err})"
            raise ValueError(f"{path}, line {line}: {what} (byte offset {line_offset(path, line)})") from None


def _read_tsv(path: Path, layout: GlueLayout) -> Dataset:
    """A GLUE TSV file, checked as it is read: encoding, header, labels (type and range), no empty file;
    every error names the file, and where it has one the line, the value and the line's byte offset."""
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name} for GLUE {layout.folder} in {path.parent}")
    rows = _tsv_rows(path)
    if layout.header:
        if not rows:
            raise ValueError(f"{path}: empty file (no header)")
        (_, header), rows = rows[0], rows[1:]
        index = {name: i for i, name in enumerate(header)}
        missing = [c for c in [*layout.text.values(), layout.label] if c not in index]
        if missing:
            raise ValueError(f"{path}: columns {missing} not in header {header}")
        column = lambda c: index[c]  # noqa: E731
    else:
        column = lambda c: c  # noqa: E731
    need = max(column(c) for c in [*layout.text.values(), layout.label]) + 1
    columns: dict[str, list] = {name: [] for name in [*layout.text, "label"]}
    skipped = 0
    classes = _num_classes(layout)
    for line, row in rows:
        if len(row) < need:
            skipped += 1
            continue
        raw = row[column(layout.label)].strip()
        try:
            if layout.label_ids is not None:
                label = layout.label_ids[raw]
            else:
                label = float(raw) if layout.regression else int(raw)
        except (KeyError, ValueError):
            allowed = sorted(layout.label_ids) if layout.label_ids else "a number" if layout.regression \
                else f"an integer in [0, {classes - 1}]"
            raise ValueError(f"{path}, line {line}: label {raw!r} is not {allowed} "
                             f"(byte offset {line_offset(path, line)})") from None
        if not layout.regression and layout.label_ids is None and not 0 <= label < classes:
            raise ValueError(f"{path}, line {line}: label {label} is out of range for {layout.folder} "
                             f"({classes} classes: 0..{classes - 1}) (byte offset {line_offset(path, line)})")
        for name, col in layout.text.items():
            columns[name].append(row[column(col)])
        columns["label"].append(label)
    if skipped:
        log.warning("%s: skipped %d malformed rows", path, skipped)
    if not columns["label"]:
        raise ValueError(f"{path}: no examples (an empty file, or every row malformed)")
    return Dataset.from_dict(columns)


def _asked_for_local(data_dir) -> bool:
    return bool(data_dir or os.environ.get(ENV_DIR))


def load_glue(task: str, data_dir: str | os.PathLike | None = None, splits=None) -> DatasetDict:
    """The ``splits`` of a GLUE task (default: every split its layout names), locally when a GLUE folder
    is found, else from the hub."""
    if task not in LAYOUTS:
        raise ValueError(f"unknown GLUE task {task!r}; choose one of {sorted(LAYOUTS)}")
    layout = LAYOUTS[task]
    splits = list(splits or layout.files)
    unknown = [s for s in splits if s not in layout.files]
    if unknown:
        raise ValueError(f"GLUE {task} has no split {unknown[0]!r} with labels; its splits: {list(layout.files)}")
    root = find_glue_dir(data_dir)
    if root is not None and (root / layout.folder).is_dir():
        log.info("GLUE %s from %s", task, root / layout.folder)
        return DatasetDict({split: _read_tsv(root / layout.folder / layout.files[split], layout) for split in splits})
    if root is not None and _asked_for_local(data_dir):  # an explicit data root never falls back to the hub
        raise FileNotFoundError(f"no GLUE {task} data in {root / layout.folder} (data_dir / ${ENV_DIR}); expected "
                                f"{', '.join(layout.files[s] for s in splits)} there, or leave data_dir unset to use "
                                "the hub")
    if root is not None:
        log.warning("no %s folder in %s: loading glue/%s from the hub", layout.folder, root, task)
    from datasets import load_dataset

    hub = load_dataset("nyu-mll/glue", task)
    return DatasetDict({split: hub[split] for split in splits})
