"""``python -m mgpp.report <run or sweep dirs> [--out DIR]``: tables (Markdown, CSV) and figures (PNG).

Examples::

    python -m mgpp.report experiments/table6_ablation.yaml                 # the paper's table alone
    python -m mgpp.report experiments/table1_deberta_glue.yaml outputs/experiments/table1_deberta_glue
    python -m mgpp.report outputs/experiments/table1_deberta_glue --out reports/table1
    python -m mgpp.report outputs/sweeps/sensitivity_lam --by lam
    python -m mgpp.report --wandb my-team/mgpp --wandb-group table1_deberta_glue --out reports/table1

A path that does not exist, or folders without a finished run (and no experiment file to print), end
it with one line on stderr and exit status 1; ``--debug`` (or ``HYDRA_FULL_ERROR=1``) shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path

from . import figures
from .runs import find_runs, wandb_runs
from .per_example import all_comparisons, comparisons_csv, per_example_markdown
from .tables import (cells_from_runs, compare, differences_markdown, group_label, group_runs, kept_weights,
                     kept_weights_markdown, load_experiment_paper, method_rank, parse_method_spec, percent_scale,
                     seed_duplicates, summarize, to_csv, to_markdown)

def _experiment_dirs() -> list[Path]:
    """Where experiment files live: experiments/ of a checkout, the experiment group a wheel ships."""
    from ..config import config_dir

    return [Path(__file__).resolve().parents[2] / "experiments", Path(config_dir()) / "experiment"]

log = logging.getLogger("mgpp.report")
PROG = "python -m mgpp.report"


class ReportError(Exception):
    """Nothing to report from what the command line names: said in one line, without a traceback."""


def _labelled_groups(runs, by) -> dict[str, list]:
    """``{label: runs}`` as the tables group them: the method, then any setting that splits it
    (``mgpp (sigma1_sq=1.0)``), so that two settings of a method are two lines in a figure. In the
    tables' method order, each method's settings by value (numbers as numbers: 1e-10 before 1e-8).
    Made from all the runs of a report, then cut per figure (:func:`_members`), so that a figure
    names its lines as the tables name their rows."""
    def order(item):
        (_, _, method, _, split), _members = item
        return method_rank(method), [(0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for _, v in split]

    labelled: dict[str, list] = {}
    for (_, _, method, _, split), members in sorted(group_runs(runs, by).items(), key=order):
        labelled.setdefault(group_label(method, split), []).extend(members)
    return labelled


def _members(labelled: dict[str, list], keep) -> dict[str, list]:
    """``labelled`` with only the runs ``keep`` accepts, groups left empty dropped."""
    cut = {label: [r for r in runs if keep(r)] for label, runs in labelled.items()}
    return {label: runs for label, runs in cut.items() if runs}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*",
                   help="run or sweep folders (searched recursively), and experiment files (experiments/<name>.yaml, "
                        "or just <name>) whose paper numbers to print beside the runs")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    p.add_argument("--by", nargs="*", default=[], metavar="KEY",
                   help="extra config keys to group by, e.g. lam for a sensitivity sweep; 'a|b' reads b where a "
                        "run's config lacks a (sigma1_sq|prior.sigma1_sq: runs from before and after a key moved)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="also read finished runs from this W&B project")
    p.add_argument("--wandb-group", help="only W&B runs of this group (the experiment name)")
    p.add_argument("--fig2a-methods", default="",
                   help="methods compared in Fig. 2a, e.g. mgpp,l2 (default: every method that prunes, every seed)")
    p.add_argument("--no-figures", action="store_true", help="tables only")
    p.add_argument("--reference", default="mgpp",
                   help="method whose differences to the others are tabulated; 'method@key=value' pins a --by "
                        "key (repeat '@key=value' for more), e.g. mgpp@sigma1_sq=1.0")
    p.add_argument("--compare", default="l2,gmp,pa",
                   help="methods to compare the reference with, paired by seed, 95%% t-intervals ('' for none); "
                        "pinned like --reference, so 'mgpp@sigma1_sq=0.05' compares one method's two settings")
    p.add_argument("--replicates", type=int, default=4000,
                   help="bootstrap replicates of the per-example paired differences (default 4000)")
    p.add_argument("--lam", type=float, default=1e-7, help="prior of Fig. 1 / A1 (default: the paper's)")
    p.add_argument("--sigma0-sq", type=float, default=1e-10)
    p.add_argument("--sigma1-sq", type=float, default=0.05)
    p.add_argument("--debug", action="store_true",
                   help="a Python traceback instead of a one-line error (so does HYDRA_FULL_ERROR=1)")
    args = p.parse_args(argv)
    if not args.paths and not args.wandb:
        p.error("give run/sweep folders, --wandb, or both")
    try:  # a misspelt pin fails before any run is read
        for spec in [args.reference, *filter(None, args.compare.split(","))]:
            parse_method_spec(spec, args.by)
    except ValueError as error:
        p.error(str(error))
    return args


def split_inputs(paths) -> tuple[list[Path], list[Path]]:
    """Run/sweep folders, and experiment files: a ``.yaml`` path, or the stem of one in experiments/."""
    folders, files = [], []
    for raw in paths:
        path = Path(raw)
        if path.suffix in (".yaml", ".yml") and path.is_file():
            files.append(path)
        elif not path.exists() and any((d / f"{raw}.yaml").is_file() for d in _experiment_dirs()):
            files.append(next(d / f"{raw}.yaml" for d in _experiment_dirs() if (d / f"{raw}.yaml").is_file()))
        else:
            folders.append(path)  # read_runs names a missing one
    return folders, files


def main(argv=None) -> int:
    """The report; a missing path or nothing to report is one line on stderr and exit status 1."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        return report(args)
    except (ReportError, FileNotFoundError) as err:
        if args.debug or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1


def read_runs(args, folders: list[Path], experiment_files: list[Path], left_out: list | None = None) -> list:
    """The runs of ``folders`` (and W&B). Raises FileNotFoundError for paths that do not exist (all named
    at once), :class:`ReportError` for folders without one finished run when no experiment file gives a
    table to print anyway. Runs whose files are damaged are left out, each with a warning, and appended
    to ``left_out`` (:class:`~mgpp.report.runs.LeftOut`)."""
    missing = [str(f) for f in folders if not f.exists()]
    if missing:
        raise FileNotFoundError(f"no such run or sweep folder (nor experiment file): {', '.join(missing)}")
    left_out = [] if left_out is None else left_out
    runs = find_runs(folders, left_out=left_out)
    if args.wandb:
        runs += wandb_runs(args.wandb, {"group": args.wandb_group} if args.wandb_group else None)
    finished = [r for r in runs if r.finished]
    if not finished and not experiment_files:
        where = ", ".join([*map(str, folders), *([f"W&B {args.wandb}"] if args.wandb else [])])
        shown = "; ".join(f"{x.path}: {x.reason}" for x in left_out[:3]) + ("; ..." if len(left_out) > 3 else "")
        damaged = f"; {len(left_out)} left out as damaged: {shown}" if left_out else ""
        raise ReportError((f"no finished run in {where}: {len(runs)} runs found, none finished (no metrics.json yet)"
                           if runs else f"no run found in {where}") + damaged)
    for folder in folders:  # one empty folder among others: most likely a wrong path
        if not any(r.path and r.path.is_relative_to(folder) for r in runs):
            log.warning("%s holds no run folder (no config.yaml under it)", folder)
    log.info("%d runs found, %d finished", len(runs), len(finished))
    return runs


def report(args) -> int:
    """Tables (report.md, results.csv) and figures from the runs and experiment files ``args`` names."""
    folders, experiment_files = split_inputs(args.paths)
    left_out: list = []
    runs = read_runs(args, folders, experiment_files, left_out)
    finished = [r for r in runs if r.finished]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    paper = [c for f in experiment_files for c in load_experiment_paper(f)]
    named = {c.experiment for c in paper}
    paper += [c for c in cells_from_runs(runs) if c.experiment not in named]
    rows = summarize(runs, by=args.by, paper=paper)
    markdown = to_markdown(rows, paper)
    diffs, unpaired = compare(runs, reference=args.reference, others=args.compare.split(","), by=args.by) \
        if args.compare else ([], [])
    changes, examples = all_comparisons(diffs, runs, replicates=args.replicates)  # every p-value Holm-adjusted
    if diffs or unpaired:
        markdown += "\n" + differences_markdown(diffs, unpaired, changes)
    if examples:
        markdown += "\n" + per_example_markdown(examples)
    if diffs:
        comparisons_csv(out / "comparisons.csv", diffs, changes, examples)
    kept = kept_weights_markdown(kept_weights(runs, by=args.by))  # grouped over all runs, as the tables are
    if kept:
        markdown += "\n" + kept
    to_csv(rows, out / "results.csv", paper)

    figure_lines = [] if args.no_figures else [f"![{p.stem}](figures/{p.name})" for p in make_figures(args, runs, out)]
    left = left_out_markdown(left_out, seed_duplicates(runs, args.by), runs)
    if left:
        markdown += "\n" + left
    lines = ["# Results", "", f"{len(finished)} finished runs from: "
             + ", ".join([*map(str, args.paths), *([f"W&B {args.wandb}"] if args.wandb else [])]), "", markdown]
    if figure_lines:
        lines += ["## Figures", "", *figure_lines, ""]
    (out / "report.md").write_text("\n".join(lines))
    print(markdown)
    log.info("wrote %s, %s%s", out / "report.md", out / "results.csv",
             f" and {len(figure_lines)} figures in {out / 'figures'}" if figure_lines else "")
    return 0


def _name(run) -> str:
    return f"`{run.path}`" if run.path is not None else f"W&B run (seed {run.get('seed')})"


def left_out_markdown(damaged: list, duplicates: list, runs: list) -> str:
    """``## Runs left out``: the runs the report does not count and why (a damaged file, another run of
    the same cell and seed), and the damaged log lines it skipped; empty when there are none."""
    for run in runs:  # read every finished run's log, so that a damaged line is named wherever it is
        if run.finished:
            run.records  # noqa: B018  (cached; warns once per damaged log)
    skipped = [line for run in runs for line in run.skipped_lines]
    if not damaged and not duplicates and not skipped:
        return ""
    out = ["## Runs left out", ""]
    out += [f"- `{entry.path}`: {entry.reason}; the run is left out" for entry in damaged]
    out += [f"- {_name(run)}: seed {run.get('seed')} is counted from {_name(kept)} (the same task, method, sparsity "
            "and settings); this run is left out" for run, kept in duplicates]
    out += [f"- `{file}`, {where}: damaged, skipped (the run's other records are used)" for file, where in skipped]
    return "\n".join(out) + "\n"


def make_figures(args, runs, out: Path) -> list[Path]:
    """Fig. 1 and A1, then per experiment, task and sparsity Fig. 2a, 2b and the dev curves, their
    lines labelled as the tables' rows (labels made once from every run: :func:`_labelled_groups`)."""
    finished = [r for r in runs if r.finished]
    prior = dict(lam=args.lam, sigma0_sq=args.sigma0_sq, sigma1_sq=args.sigma1_sq)
    made = [figures.figure1(out / "figures" / "fig1_penalties.png", **prior),
            figures.figure_a1(out / "figures" / "figA1_prior_knobs.png", **prior)]
    labelled = _members(_labelled_groups(runs, args.by), lambda r: r.finished)
    styles = figures.label_styles(labelled)  # one colour per setting, everywhere
    fig2a_methods = [m for m in args.fig2a_methods.split(",") if m] or None
    by_setting = defaultdict(list)
    for run in finished:
        by_setting[(run.get("experiment_name"), run.get("task.name"), run.get("sparsity"))].append(run)
    for (experiment, task, sparsity), group in sorted(by_setting.items(), key=str):
        stem = f"{experiment}_{task}_sparsity{sparsity}"
        title = f"({task}, {float(sparsity):.0%})"
        ids = {id(r) for r in group}
        mine = _members(labelled, lambda r: id(r) in ids)  # a line per table row: method and setting
        made.append(figures.figure2a(mine, out / "figures" / f"fig2a_{stem}.png", methods=fig2a_methods,
                                     title=title, styles=styles))
        made.append(figures.figure2b(mine, out / "figures" / f"fig2b_{stem}.png", title=title, styles=styles))
        task_cfg = group[0].config.get("task") or {}
        if task_cfg.get("main_metric"):  # the dense reference (sparsity 0) belongs in every sparsity's curve
            dense = {id(r) for r in finished if r.get("method.name") == "dense" and r.get("task.name") == task
                     and r.get("experiment_name") == experiment}
            made.append(figures.figure_dev_curves(
                _members(labelled, lambda r: id(r) in ids | dense), out / "figures" / f"dev_{stem}.png",
                f"eval_{task_cfg['main_metric']}", scale=percent_scale(task_cfg), title=title, styles=styles))
    return [p for p in made if p is not None]


if __name__ == "__main__":
    sys.exit(main())
