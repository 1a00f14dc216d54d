"""The run directory: its stage files, runs/latest, references to checkpoints, and parent chains.

```
runs/<name>/recipe.yaml  trained.pt | pruned.pt  finetuned.pt  last.pt  metrics/*.json  log.jsonl  report.md
runs/latest -> <name>
```
Every other module asks this one where a run's files are; the stage file names appear nowhere else.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from compress.errors import UserError
from compress.io import atomic_symlink
from compress.recipe import Recipe, load_recipe

RUNS_DIR = Path("runs")
LATEST = "latest"
TRAINED, PRUNED, FINETUNED = "trained.pt", "pruned.pt", "finetuned.pt"
STAGES = (TRAINED, PRUNED, FINETUNED)  # lineage order: a baseline, its pruned model, the fine-tuned one
NEWEST_FIRST = (FINETUNED, PRUNED, TRAINED)  # what a run directory stands for: its newest stage
PRUNE_START = (FINETUNED, TRAINED, PRUNED)  # what a run directory offers to prune: unpruned-or-finetuned weights first
LAST = "last.pt"  # resume state of an interrupted train/finetune
SNAPSHOTS = "snapshots"  # train.snapshot_every: the model of every N-th epoch, for learning curves
LOG_FILE = "log.jsonl"
RECIPE_FILE = "recipe.yaml"
METRICS_DIR = "metrics"
PRUNE_SUMMARY = "prune_summary.json"
LATENCY_LUT = "latency_lut.json"  # a latency-targeted prune's lookup table, copied into its run
LUT_CACHE = ".latency_lut"  # the lookup tables shared by the runs of one runs directory
REPORT_FILE = "report.md"  # `compress report --format md`, in the runs directory


def load_run_recipe(run_dir: str | os.PathLike, overrides: Iterable[str] = ()) -> Recipe:
    """A run's stored recipe with `--set`-style overrides. The environment is not consulted: the run keeps the data
    root it was made with unless an override (--data, --set data.root=) names another."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} has no {RECIPE_FILE}: pass a run directory made by `compress prune RECIPE`")
    return load_recipe(path, overrides=list(overrides), env=False)


def eval_dir(checkpoint: str | os.PathLike) -> Path:
    """Where `compress eval CKPT` writes per-sample results and summary.json by default: <dir>/eval_<stem>/."""
    path = Path(checkpoint)
    return path.parent / f"eval_{path.stem}"


def metrics_file(run_dir: str | os.PathLike, stage_file: str) -> Path:
    """runs/NAME/metrics/<stem>.json for a stage file (trained.pt -> metrics/trained.json)."""
    return Path(run_dir) / METRICS_DIR / f"{Path(stage_file).stem}.json"


def stage_checkpoints(run: str | os.PathLike) -> list[Path]:
    """The stage checkpoints of a run in lineage order (epoch checkpoints are resume state, not stages)."""
    found = (p for p in Path(run).glob("*.pt") if p.name.startswith(tuple(Path(s).stem for s in STAGES)))
    return sorted(found, key=lambda p: (STAGES.index(p.name) if p.name in STAGES else len(STAGES), p.name))


def checkpoint_of_dir(d: str | os.PathLike, order: tuple[str, ...] = NEWEST_FIRST) -> Path | None:
    """The first stage file of `order` that the directory holds, or None."""
    return next((Path(d) / n for n in order if (Path(d) / n).is_file()), None)


def resolve_checkpoint(path_or_run: str | os.PathLike, *, order: tuple[str, ...] = NEWEST_FIRST,
                       what: str = "checkpoint") -> Path:
    """A checkpoint file as given; a run directory -> the first of `order` it holds (by default `finetuned.pt`,
    else `pruned.pt`, else `trained.pt`). `what` names the setting in the error (e.g. "prune.from")."""
    path = Path(path_or_run)
    if path.is_dir():
        found = checkpoint_of_dir(path, order)
        if found is None:
            raise UserError(f"{what}: no checkpoint in run directory {path} (looked for {', '.join(order)})")
        return found
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (a .pt file or a run directory)")
    return path


def resolve_run(run: str | os.PathLike | None, *, runs_dir: str | os.PathLike = RUNS_DIR) -> Path:
    """A run directory: `run` as given or under runs_dir; runs/latest when None. One-line error when missing."""
    runs_dir = Path(runs_dir)
    if run is None:
        path = runs_dir / LATEST
        if not path.exists():
            raise UserError(f"no run at {path}: run `compress prune RECIPE` first, or pass --run runs/NAME")
        return path.resolve()
    for cand in (Path(run), runs_dir / run):
        if cand.exists():
            return cand.resolve()
    names = ", ".join(d.name for d in discover_runs(runs_dir)) or "none"
    raise UserError(f"no run or checkpoint at {run} (runs under {runs_dir}: {names})")


def point_latest(run_dir: str | os.PathLike) -> None:
    """runs/latest -> run_dir (a relative symlink beside it, replaced atomically)."""
    run_dir = Path(run_dir)
    atomic_symlink(run_dir.name, run_dir.parent / LATEST)


def discover_runs(runs_dir: str | os.PathLike = RUNS_DIR) -> list[Path]:
    """Every run directory under runs_dir, latest first (runs/latest's target leads, then the newest)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [d for d in runs_dir.iterdir() if d.is_dir() and not d.is_symlink() and stage_checkpoints(d)]
    latest = runs_dir / LATEST
    head = latest.resolve() if latest.exists() else None
    runs.sort(key=lambda d: (d.resolve() != head, -_run_time(d)))
    return runs


def _run_time(run: Path) -> float:
    return max((p.stat().st_mtime for p in stage_checkpoints(run)), default=run.stat().st_mtime)


# ----------------------------------------------------------------------------------------------- metadata


def read_meta(path: str | os.PathLike) -> dict:
    """Checkpoint metadata without building the model (state_dict dropped); SPIN files give {"format": "spin"}."""
    path = Path(path)
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated file, ...: one line for the user
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path}: {first}") from exc
    if not isinstance(ckpt, dict):
        return {"format": "unknown"}
    if "format_version" not in ckpt:
        return {"format": "spin" if "model" in ckpt else "state_dict"}
    return {k: v for k, v in ckpt.items() if k not in ("state_dict", "optimizer", "scheduler")}


def parent_ref(meta: dict) -> str | None:
    """The parent reference a checkpoint records (a path as written when it was made), or None."""
    parent = meta.get("parent")
    if isinstance(parent, dict):
        parent = parent.get("path") or parent.get("checkpoint")
    return str(parent) if parent else None


def parent_model(meta: dict) -> dict | None:
    """The {"name", "overrides"} a checkpoint records for a parent file that does not name its model (SPIN's
    checkpoint, a bare state_dict): given once where the file entered the run, never asked for again."""
    parent = meta.get("parent")
    model = parent.get("model") if isinstance(parent, dict) else None
    return model if isinstance(model, dict) and model.get("name") else None


def parent_record(path: str | os.PathLike, meta: dict) -> str | dict:
    """What a new checkpoint stores as its parent: the path, plus the model config when the parent is foreign
    (`meta` as load_checkpoint returned it)."""
    if meta.get("format") in ("spin", "state_dict") and isinstance(meta.get("model"), dict):
        return {"path": str(path), "model": meta["model"]}
    return str(path)


def resolve_ref(ref: str, *, near: str | os.PathLike, runs_dir: str | os.PathLike | None = None) -> Path | None:
    """A recorded checkpoint reference -> an existing file, or None.

    Tried in order: as written; relative to the directory `near` (the referring run) and to its parent; relative to
    runs_dir's parent (the working directory the run was made from); finally the reference's tail under runs_dir
    (runs moved or reported from elsewhere: at least <run>/<file>, longest first). A run directory gives its newest
    stage file.
    """
    p, near = Path(ref), Path(near)
    runs_dir = Path(runs_dir) if runs_dir is not None else near.parent
    candidates = [p] if p.is_absolute() else [p, runs_dir.parent / p, near / p, near.parent / p]
    candidates += [runs_dir / Path(*p.parts[i:]) for i in range(1, len(p.parts) - 1)]
    for c in candidates:
        if c.is_dir():
            c = checkpoint_of_dir(c)
        if c is not None and c.is_file():
            return c.resolve()
    return None


def is_trained(path: Path, meta: dict) -> bool:
    """A baseline made by `compress train` (it starts a chain even if it was initialised from another file)."""
    return str(meta.get("stage") or "").lower() == "trained" or path.name.startswith(Path(TRAINED).stem)


@dataclass(frozen=True)
class Node:
    """One checkpoint of a chain: its file, metadata and resolved parent."""

    path: Path
    meta: dict
    parent: Path | None
    parent_ref: str | None  # as recorded (kept when the file is gone)


class Lineage:
    """Checkpoint metadata and parent links, each file read once."""

    def __init__(self, runs_dir: str | os.PathLike | None = None):
        self.runs_dir = Path(runs_dir) if runs_dir is not None else None
        self.nodes: dict[Path, Node] = {}
        self.foreign: dict[Path, dict] = {}  # parent file -> the model config a child recorded for it

    def node(self, path: str | os.PathLike) -> Node:
        path = Path(path).resolve()
        if path not in self.nodes:
            meta = read_meta(path)
            ref = parent_ref(meta)
            parent = resolve_ref(ref, near=path.parent, runs_dir=self.runs_dir) if ref else None
            self.nodes[path] = Node(path, meta, parent, ref)
            if parent is not None and parent_model(meta):
                self.foreign.setdefault(parent, parent_model(meta))
        return self.nodes[path]

    def foreign_model(self, path: str | os.PathLike) -> dict | None:
        """The model config recorded for a foreign file by a checkpoint of this lineage already read, or None."""
        return self.foreign.get(Path(path).resolve())

    def chain(self, path: str | os.PathLike) -> list[Node]:
        """Root first, ending with `path`; stops at a missing parent or a cycle. A trained baseline
        (`trained.pt`, stage "trained") starts the chain even if it was itself initialised from another file."""
        out: list[Node] = []
        seen: set[Path] = set()
        cur: Path | None = Path(path).resolve()
        while cur is not None and cur not in seen:
            seen.add(cur)
            node = self.node(cur)
            out.append(node)
            cur = node.parent
        out = out[::-1]
        start = max((i for i, n in enumerate(out) if is_trained(n.path, n.meta)), default=0)
        return out[start:]


def recorded_foreign(path: str | os.PathLike, runs_dir: str | os.PathLike = RUNS_DIR) -> dict | None:
    """The model config that a run under runs_dir recorded for the foreign file `path` (SPIN's checkpoint entered
    through prune.from or model.checkpoint), or None: later commands given the file itself need no --name."""
    target = Path(path).resolve()
    lineage = Lineage(runs_dir)
    for run in discover_runs(runs_dir):
        for ckpt in stage_checkpoints(run):
            try:
                lineage.node(ckpt)
            except UserError:  # an unreadable file is not this lookup's concern
                continue
            if target in lineage.foreign:
                return lineage.foreign[target]
    return None


def chain_root(path: str | os.PathLike, *, runs_dir: str | os.PathLike | None = None) -> Path:
    """The first checkpoint of `path`'s chain: the unpruned baseline a pruned or fine-tuned model came from."""
    return Lineage(runs_dir).chain(path)[0].path
