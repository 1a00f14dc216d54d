"""The before/after report: one row per checkpoint of a pruning chain, deltas to the baseline, tables and plots.

Rows come from run directories (`runs/<name>/{trained,pruned,finetuned}.pt`) and the `parent` links inside
the checkpoints, so a P2 run shows the whole chain baseline -> P1 -> P1+FT(n) -> P2 -> P2+FT(m).
Numbers are read, never recomputed: metrics from the checkpoint metadata (or `metrics/<stem>.json` of the
run), cost from the cached profile `<ckpt>.profile.json` (see compress.profile.profile_checkpoint).
Deltas are computed here and never stored.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from compress.constants import EVAL_DATASETS
from compress.errors import UserError
from compress.recovery import CAPTION as RECOVERY_CAPTION
from compress.recovery import recovery_rows, recovery_table, render_recovery_markdown

log = logging.getLogger(__name__)

CHECKPOINT_NAMES = ("trained.pt", "pruned.pt", "finetuned.pt")
HIGHER_IS_BETTER = frozenset({"fb_acc", "fb_f1", "parts_acc", "parts_f1"})
NOT_COMPARED = frozenset({"n", "train_batch", "repeats", "threads", "img_res", "batch"})
DATASET_TITLES = {"3dpw": "3DPW", "mpi-inf-3dhp": "MPI-INF-3DHP", "h36m-p1": "H36M-P1", "h36m-p2": "H36M-P2",
                  "lsp": "LSP"}
DASH = "–"
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


# ----------------------------------------------------------------------------------------------- columns


@dataclass(frozen=True)
class Column:
    """One numeric column: where it lives in a row, its CSV key (with unit), how to show it."""

    key: str  # CSV header, units included (macs_g, 3dpw_mpjpe_mm, ...)
    title: str  # table header
    path: tuple[str, ...]  # location in the row dict (and in row["delta"])
    group: str  # cost | 3d | lsp
    scale: float = 1.0  # row value * scale = table value
    digits: int = 1
    csv_scale: float | None = None  # row value * csv_scale = CSV value (default: scale)


def _metric_columns() -> list[Column]:
    cols = []
    for ds in EVAL_DATASETS:
        slug = ds.replace("-", "_")
        title = DATASET_TITLES.get(ds, ds)
        if ds == "lsp":
            cols += [
                Column("lsp_fb_acc_pct", "LSP acc %", ("metrics", ds, "fb_acc"), "lsp", digits=2),
                Column("lsp_fb_f1", "LSP F1", ("metrics", ds, "fb_f1"), "lsp", digits=3),
                Column("lsp_parts_acc_pct", "LSP parts acc %", ("metrics", ds, "parts_acc"), "lsp", digits=2),
                Column("lsp_parts_f1", "LSP parts F1", ("metrics", ds, "parts_f1"), "lsp", digits=3),
            ]
            continue
        cols += [
            Column(f"{slug}_mpjpe_mm", f"{title} MPJPE", ("metrics", ds, "mpjpe_mm"), "3d"),
            Column(f"{slug}_pa_mpjpe_mm", f"{title} PA", ("metrics", ds, "pa_mpjpe_mm"), "3d"),
            Column(f"{slug}_pve_mm", f"{title} PVE", ("metrics", ds, "pve_mm"), "3d"),
        ]
    return cols


COST_COLUMNS = [
    Column("params", "params (M)", ("params_total",), "cost", scale=1e-6, digits=3, csv_scale=1.0),
    Column("macs_g", "MACs (G)", ("macs",), "cost", scale=1e-9, digits=3),
    Column("latency_ms", "CPU ms b1", ("latency_ms",), "cost", digits=2),
    Column("latency_b32_ms", "CPU ms b32", ("latency_b32_ms",), "cost", digits=1),
    Column("gpu_latency_ms", "GPU ms b1", ("gpu_latency_ms",), "cost", digits=2),
    Column("onnx_latency_ms", "ORT ms b1", ("onnx_latency_ms",), "cost", digits=2),
    Column("infer_mem_mb", "mem infer MB", ("peak_mem_mb", "infer"), "cost", digits=1),
    Column("train_mem_mb", "mem train MB", ("peak_mem_mb", "train"), "cost", digits=1),
]
COLUMNS = COST_COLUMNS + _metric_columns()
# CSV-only extras: the split of parameters and both memory figures.
EXTRA_CSV_COLUMNS = [
    Column("params_encoder", "", ("params_encoder",), "cost"),
    Column("params_regressor", "", ("params_regressor",), "cost"),
    Column("infer_mem_measured_mb", "", ("peak_mem_mb", "infer_measured"), "cost"),
    Column("infer_mem_estimate_mb", "", ("peak_mem_mb", "infer_estimate"), "cost"),
    Column("train_mem_measured_mb", "", ("peak_mem_mb", "train_measured"), "cost"),
    Column("train_mem_estimate_mb", "", ("peak_mem_mb", "train_estimate"), "cost"),
]


def _get(d: Any, path: Iterable[str]) -> Any:
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------------------------- checkpoints


def read_meta(path: str | Path) -> dict:
    """Checkpoint metadata without building the model (state_dict dropped); SPIN files give {"format": "spin"}."""
    import torch

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


def _parent_ref(meta: dict) -> str | None:
    parent = meta.get("parent")
    if isinstance(parent, dict):
        parent = parent.get("path") or parent.get("checkpoint")
    return str(parent) if parent else None


def _resolve_ref(ref: str, child: Path, runs_dir: Path) -> Path | None:
    """A recorded parent path -> an existing file: as written, from the project root, next to the child, or
    its tail under runs_dir."""
    p = Path(ref)
    candidates = [p] if p.is_absolute() else [p, runs_dir.parent / p, child.parent / p, child.parent.parent / p]
    # Runs moved or reported from another working directory: the recorded path's tail under runs_dir
    # (at least <run>/<file>, longest first).
    candidates += [runs_dir / Path(*p.parts[i:]) for i in range(1, len(p.parts) - 1)]
    for c in candidates:
        if c.is_dir():
            c = _checkpoint_of_dir(c)
        if c is not None and c.is_file():
            return c.resolve()
    return None


def _checkpoint_of_dir(d: Path) -> Path | None:
    for name in ("finetuned.pt", "pruned.pt", "trained.pt"):
        if (d / name).is_file():
            return d / name
    return None


def _kind(path: Path, meta: dict) -> str:
    """baseline | prune | finetune: what step produced this checkpoint."""
    stage = str(meta.get("stage") or "").lower()
    if stage.startswith("ft") or path.name.startswith("finetuned"):
        return "finetune"
    if re.match(r"p\d", stage) or stage.startswith("prun") or path.name.startswith("pruned") or "prune" in meta:
        return "prune"
    if _is_trained(path, meta) or _parent_ref(meta) is None:
        return "baseline"
    return "finetune"


def _is_trained(path: Path, meta: dict) -> bool:
    return str(meta.get("stage") or "").lower() == "trained" or path.name.startswith("trained")


def _ft_label(meta: dict) -> str:
    """FT(N) as in the study, with "+KD" when the fine-tuning distilled from a teacher."""
    stage = str(meta.get("stage") or "")
    kd = "+KD" if meta.get("distill") else ""
    if stage.upper().startswith("FT"):
        return stage + kd
    epochs = meta.get("epochs") or _get(meta, ("recipe", "finetune", "epochs"))
    return (f"FT({epochs})" if epochs else "FT") + kd


@dataclass(frozen=True)
class _Node:
    path: Path
    meta: dict
    parent: Path | None
    parent_ref: str | None  # as recorded (kept when the file is gone)


class _Graph:
    """Checkpoint metadata and parent links, read once per report."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir
        self.nodes: dict[Path, _Node] = {}

    def node(self, path: Path) -> _Node:
        path = path.resolve()
        if path not in self.nodes:
            meta = read_meta(path)
            ref = _parent_ref(meta)
            parent = _resolve_ref(ref, path, self.runs_dir) if ref else None
            self.nodes[path] = _Node(path, meta, parent, ref)
        return self.nodes[path]

    def chain(self, path: Path) -> list[_Node]:
        """Root first, ending with `path`; stops at a missing parent or a cycle. A trained baseline
        (`trained.pt`, stage "trained") starts the chain even if it was itself initialised from another file."""
        out: list[_Node] = []
        seen: set[Path] = set()
        cur: Path | None = path.resolve()
        while cur is not None and cur not in seen:
            seen.add(cur)
            node = self.node(cur)
            out.append(node)
            cur = node.parent
        out = out[::-1]
        start = max((i for i, n in enumerate(out) if _is_trained(n.path, n.meta)), default=0)
        return out[start:]


def stage_labels(chain: list[_Node]) -> list[str]:
    """baseline, P1, P1+FT(20), P2, P2+FT(8): prune rounds are counted along the chain."""
    labels, rounds, last = [], 0, ""
    for i, node in enumerate(chain):
        kind = _kind(node.path, node.meta)
        kind = "baseline" if i == 0 and kind not in ("prune", "finetune") else kind
        if kind == "prune":
            rounds += 1
            last = f"P{rounds}"
            labels.append(last)
        elif kind == "finetune":
            ft = _ft_label(node.meta)
            labels.append(f"{last}+{ft}" if last else ft)
        else:
            labels.append("baseline" if i == 0 else "trained")
    return labels


# ----------------------------------------------------------------------------------------------- runs


def discover_runs(runs_dir: str | Path = "runs") -> list[Path]:
    """Every run directory under runs_dir, latest first (runs/latest's target leads)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [d for d in runs_dir.iterdir() if d.is_dir() and not d.is_symlink() and run_checkpoints(d)]
    latest = runs_dir / "latest"
    head = latest.resolve() if latest.exists() else None
    runs.sort(key=lambda d: (d.resolve() != head, -_run_time(d)))
    return runs


def _run_time(run: Path) -> float:
    return max((p.stat().st_mtime for p in run_checkpoints(run)), default=run.stat().st_mtime)


def run_checkpoints(run: Path) -> list[Path]:
    """The stage checkpoints of a run (epoch checkpoints are resume state, not stages)."""
    return sorted((p for p in run.glob("*.pt") if p.name.startswith(("trained", "pruned", "finetuned"))),
                  key=lambda p: (CHECKPOINT_NAMES.index(p.name) if p.name in CHECKPOINT_NAMES else 3, p.name))


def _resolve_run(run: str | Path, runs_dir: Path) -> Path:
    p = Path(run)
    for cand in (p, runs_dir / p):
        if cand.exists():
            return cand.resolve()
    names = ", ".join(d.name for d in discover_runs(runs_dir)) or "none"
    raise UserError(f"no run or checkpoint at {run} (runs under {runs_dir}: {names})")


def _baseline_path(baseline: str | Path, runs_dir: Path) -> Path:
    p = _resolve_run(baseline, runs_dir)
    if p.is_dir():
        found = _checkpoint_of_dir(p)
        if found is None:
            raise UserError(f"--baseline {baseline}: no trained.pt/finetuned.pt/pruned.pt in that directory")
        p = found
    return p.resolve()


# ----------------------------------------------------------------------------------------------- rows


def collect_rows(
    runs: Iterable[str | Path] | None = None, *, baseline: str | Path | None = None, retime: bool = False,
    device: str = "cpu", runs_dir: str | Path = "runs", onnx: bool = False, interleave: bool = False,
) -> list[dict]:
    """Rows (JSON contract of DESIGN.md) for the baseline, each pruned model and each fine-tuned stage.

    runs: run directories, run names under runs_dir, or checkpoint files; default all runs, latest first.
    baseline: the reference checkpoint (or run dir) for deltas; default the root of each chain of parents.
    interleave: time all rows of a chain again, in alternation, instead of using each checkpoint's cached latency.
    """
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA on this machine; profile on the CPU with --device cpu")
    runs_dir = Path(runs_dir)
    targets = [_resolve_run(r, runs_dir) for r in runs] if runs else discover_runs(runs_dir)
    if not targets:
        raise UserError(f"no runs under {runs_dir}/: run `compress prune RECIPE` first, or name a run directory")
    graph = _Graph(runs_dir)
    base_path = _baseline_path(baseline, runs_dir) if baseline else None

    # Each group is one baseline and the tree of checkpoints hanging from it.
    groups: dict[Path | None, dict[Path, tuple[str, int]]] = {}
    order: dict[Path, float] = {}
    for rank, target in enumerate(targets):
        for ckpt in (run_checkpoints(target) if target.is_dir() else [target]):
            chain = graph.chain(ckpt)
            labels = stage_labels(chain)
            root = base_path or (chain[0].path if labels[0] == "baseline" else _virtual_root(chain[0].path))
            members = groups.setdefault(root, {})
            if base_path is not None and chain[0].path != base_path and labels[0] == "baseline":
                labels[0] = "trained"  # the chain's own start, shown next to the baseline given on the command line
            for depth, (node, label) in enumerate(zip(chain, labels)):
                members.setdefault(node.path, (label, depth))
                order.setdefault(node.path, rank)

    rows = []
    for root, members in groups.items():
        start = len(rows)
        if root.name == VIRTUAL_ROOT:
            base_row = _virtual_baseline(graph.node(root.parent), runs_dir=runs_dir, onnx=onnx)
        else:
            base_row = _row(graph.node(root), "baseline", runs_dir=runs_dir, retime=retime, device=device, onnx=onnx)
        rows.append(base_row)
        for path in _tree_order(members, graph, root, order):
            if path == root:
                continue
            label, _ = members[path]
            row = _row(graph.node(path), label, runs_dir=runs_dir, retime=retime, device=device, onnx=onnx)
            rows.append(row)
        group = rows[start:]
        _choose_memory(group)
        if interleave:
            _interleave_latency(group, device=device)
        for row in group:
            row["baseline"] = base_row["checkpoint"]
            row["delta"] = {} if row is base_row else compute_delta(row, base_row)
            row["ratio"] = compute_ratios(row, base_row)
            _note_sample_mismatch(row, base_row)
            _note_resolution_mismatch(row, base_row)
    return rows


VIRTUAL_ROOT = "(unpruned start)"


def _virtual_root(first: Path) -> Path:
    """The group key of a chain whose start was never saved (pruned from a fresh model, or a lost parent)."""
    return first / VIRTUAL_ROOT


def _virtual_baseline(first: _Node, *, runs_dir: Path, onnx: bool) -> dict:
    """A baseline row from the first pruned checkpoint's own record of the model before pruning (params, MACs)."""
    before = _get(first.meta, ("prune", "before")) or {}
    model = first.meta.get("model") if isinstance(first.meta.get("model"), dict) else {}
    why = (f"baseline checkpoint {first.parent_ref} not found" if first.parent_ref else
           f"no baseline checkpoint: {first.path.name} was pruned from a freshly initialised model")
    row: dict[str, Any] = {
        "run": _run_name(first.path, runs_dir), "stage": "baseline", "checkpoint": None,
        "model": model.get("name"), "parent": None, "created": None, "img_res": None, "latency": None,
        "params_total": before.get("params_total"), "params_encoder": before.get("params_encoder"),
        "params_regressor": before.get("params_regressor"), "macs": before.get("macs"),
        "latency_ms": None, "latency_b32_ms": None, "gpu_latency_ms": None, "onnx_latency_ms": None,
        "peak_mem_mb": None, "metrics": {}, "metrics_source": {},
        "notes": {"row": why + ("; params and MACs from its prune summary" if before else "")},
    }
    import torch

    skip = {"gpu_latency_ms"} if not torch.cuda.is_available() else set()
    skip |= set() if onnx else {"onnx_latency_ms"}
    for col in COLUMNS:
        if not _is_number(_get(row, col.path)) and col.key not in skip:
            row["notes"][col.key] = "no baseline checkpoint to measure"
    if not torch.cuda.is_available():
        row["notes"]["gpu_latency_ms"] = "no CUDA"
    return row


def _tree_order(members: dict[Path, tuple[str, int]], graph: _Graph, root: Path, order: dict[Path, float]):
    """Depth-first from the root, so every descendant follows its parent; siblings from the latest run first."""
    children: dict[Path | None, list[Path]] = {}
    for path in members:
        parent = graph.node(path).parent if path.name != VIRTUAL_ROOT else None
        children.setdefault(parent if parent in members else None, []).append(path)
    out: list[Path] = []

    def visit(p: Path) -> None:
        out.append(p)
        for c in sorted(children.get(p, []), key=lambda c: order[c]):
            visit(c)

    starts = [root] + [p for p in children.get(None, []) if p != root]
    for p in sorted(starts, key=lambda p: (p != root, order.get(p, 0))):
        if p not in out:
            visit(p)
    return out


def _run_name(path: Path, runs_dir: Path) -> str:
    try:
        return str(path.parent.relative_to(runs_dir.resolve()))
    except ValueError:
        return path.parent.name


def _row(node: _Node, stage: str, *, runs_dir: Path, retime: bool, device: str, onnx: bool) -> dict:
    meta = node.meta
    notes: dict[str, str] = {}
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    row: dict[str, Any] = {
        "run": _run_name(node.path, runs_dir),
        "stage": stage,
        "checkpoint": str(node.path),
        "model": model.get("name"),
        "parent": str(node.parent) if node.parent else node.parent_ref,
        "created": meta.get("created"),
    }
    if node.parent_ref and node.parent is None:
        notes["row"] = f"parent checkpoint {node.parent_ref} not found"
    profile, why = _profile(node.path, retime=retime, device=device)
    row.update(_cost_fields(profile))
    if profile is None:
        for col in COST_COLUMNS:
            notes[col.key] = why
    else:
        _cost_notes(profile, notes)
    row["gpu_latency_ms"], gpu_why = _gpu_latency(node.path, retime=retime)
    if gpu_why:
        notes["gpu_latency_ms"] = gpu_why
    row["onnx_latency_ms"] = None
    if onnx:
        row["onnx_latency_ms"], onnx_why = _onnx_latency_cached(node.path, profile, retime=retime)
        if onnx_why:
            notes["onnx_latency_ms"] = onnx_why
    row["metrics"], sources = _metrics(node.path, meta)
    row["metrics_source"] = sources
    for col in COLUMNS:
        if col.path[0] == "metrics" and _get(row, col.path) is None:
            notes[col.key] = "not evaluated" if col.path[1] not in row["metrics"] else "not available for this dataset"
    row["notes"] = notes
    return row


def _cost_fields(profile: dict | None) -> dict:
    p = profile or {}
    mem = dict(p.get("peak_mem_mb") or {})
    lat = dict(p.get("latency") or {})
    return {
        "params_total": p.get("params_total"),
        "params_encoder": p.get("params_encoder"),
        "params_regressor": p.get("params_regressor"),
        "macs": p.get("macs"),
        "macs_counter": p.get("macs_counter"),
        "img_res": p.get("img_res"),
        "latency_ms": p.get("latency_ms"),
        "latency_b32_ms": _get(lat, ("b32", "median_ms")),
        "latency": lat or None,
        "peak_mem_mb": mem or None,
    }


def _cost_notes(profile: dict, notes: dict[str, str]) -> None:
    if _get(profile, ("latency", "b32", "median_ms")) is None:
        notes["latency_b32_ms"] = "batch 32 not timed"
    _noise_notes(profile.get("latency") or {}, notes)


NOISY_SPREAD = 0.25  # (p90 - p10) / median above this: the machine was busy while timing


def _noise_notes(lat: dict, notes: dict[str, str]) -> None:
    for key, col in (("b1", "latency_ms"), ("b32", "latency_b32_ms")):
        st = lat.get(key) or {}
        med, p10, p90 = st.get("median_ms"), st.get("p10_ms"), st.get("p90_ms")
        if all(_is_number(v) for v in (med, p10, p90)) and med > 0 and (p90 - p10) / med > NOISY_SPREAD:
            notes[col] = (f"noisy timing: p10-p90 spread above {NOISY_SPREAD:.0%} of the median; "
                          "compare with --interleave (all rows timed in alternation), on a quieter machine")
        elif notes.get(col, "").startswith("noisy"):
            del notes[col]


def _choose_memory(rows: list[dict]) -> None:
    """One source per memory column, the same for every row: the measured peaks when every row has a positive
    one, else the device-independent estimates (a measured peak next to an estimate would compare nothing)."""
    for phase in ("infer", "train"):
        mems = [r["peak_mem_mb"] for r in rows if r.get("peak_mem_mb")]
        measured = [m.get(f"{phase}_measured") for m in mems]
        use_measured = bool(mems) and all(_is_number(v) and v > 0 for v in measured)
        for m in mems:
            m[phase] = m.get(f"{phase}_measured" if use_measured else f"{phase}_estimate")
            m[f"{phase}_source"] = "measured" if use_measured else "estimate"
        if mems and not use_measured:
            why = ("0 MB for some" if any(_is_number(v) for v in measured) else "missing for some")
            for r in rows:
                if r.get("peak_mem_mb"):
                    r["notes"][f"{phase}_mem_mb"] = (f"device-independent estimate (measured peak {why} rows; "
                                                     "see peak_mem_mb in --format json)")


def _interleave_latency(rows: list[dict], *, device: str) -> None:
    """Time every row's model again, in alternation (A B C A B C ...), so machine load hits all rows alike."""
    from compress.profile import interleaved_latency, load_any

    timed = [r for r in rows if r.get("latency") and r.get("img_res")]
    for res in sorted({r["img_res"] for r in timed}):
        same = [r for r in timed if r["img_res"] == res]
        models = {r["checkpoint"]: load_any(r["checkpoint"])[0] for r in same}
        keys = sorted({k for r in same for k in r["latency"] if re.fullmatch(r"b\d+", k)}, key=lambda k: int(k[1:]))
        for key in keys:
            stats = interleaved_latency(models, img_res=res, batch_size=int(key[1:]), device=device)
            for r in same:
                r["latency"][key] = stats[r["checkpoint"]]
        for r in same:
            r["latency"]["method"] = "interleaved"
            r["latency_ms"] = _get(r["latency"], ("b1", "median_ms"))
            r["latency_b32_ms"] = _get(r["latency"], ("b32", "median_ms"))
            _noise_notes(r["latency"], r["notes"])


def _profile(path: Path, *, retime: bool, device: str) -> tuple[dict | None, str]:
    """The checkpoint's cached profile when the file is unchanged, else profile_checkpoint (which times it)."""
    cache = path.with_name(path.name + ".profile.json")
    if cache.is_file() and not retime:
        try:
            cached = json.loads(cache.read_text())
            key, st = cached.get("key", {}), path.stat()
            if key.get("size") == st.st_size and key.get("mtime_ns") == st.st_mtime_ns and key.get("device") == device:
                return cached["profile"], ""
        except (ValueError, KeyError, AttributeError):
            log.warning("ignoring unreadable profile cache %s", cache)
    try:
        from compress.profile import profile_checkpoint

        return profile_checkpoint(path, device=device, retime=retime), ""
    except Exception as exc:  # a report shows what it can; the reason goes into a footnote
        log.warning("could not profile %s: %s", path, exc)
        return None, f"not profiled ({type(exc).__name__}: {str(exc)[:80]})"


def _gpu_latency(path: Path, *, retime: bool) -> tuple[float | None, str]:
    import torch

    if not torch.cuda.is_available():
        return None, "no CUDA"
    profile, why = _profile(path, retime=retime, device="cuda")
    return (profile or {}).get("latency_ms"), why


def _onnx_latency_cached(path: Path, profile: dict | None, *, retime: bool) -> tuple[float | None, str]:
    """onnxruntime CPU latency (batch 1 median), cached in `<ckpt>.onnx-latency.json` while the file is unchanged."""
    cache = path.with_name(path.name + ".onnx-latency.json")
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if cache.is_file() and not retime:
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                return cached["stats"]["median_ms"], ""
        except (ValueError, KeyError, TypeError):
            pass
    import tempfile

    try:
        from compress.export import export_onnx, onnx_latency

        with tempfile.TemporaryDirectory() as tmp:
            info = export_onnx(path, Path(tmp) / "model.onnx", img_res=(profile or {}).get("img_res"))
            stats = onnx_latency(info["path"], img_res=info["img_res"], batch=1)
    except Exception as exc:
        log.warning("onnxruntime latency failed for %s: %s", path, exc)
        return None, f"ONNX export failed ({type(exc).__name__})"
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_text(json.dumps({"key": key, "stats": stats}, indent=1))
    tmp.replace(cache)  # atomic: a concurrent report never reads half a file
    return stats["median_ms"], ""


def checkpoint_metrics(path: str | Path) -> dict:
    """{dataset: {metric: value}} recorded for a checkpoint (its metadata, then `metrics/<stem>.json` beside it)."""
    path = Path(path)
    return _metrics(path, read_meta(path))[0]


def _metrics(path: Path, meta: dict) -> tuple[dict, dict]:
    """Eval results of a checkpoint: its metadata first, then `metrics/<stem>.json` in its run directory."""
    metrics: dict[str, dict] = {}
    sources: dict[str, str] = {}
    for ds, vals in (meta.get("metrics") or {}).items():
        if isinstance(vals, dict):
            metrics[ds] = dict(vals)
            sources[ds] = "checkpoint"
    side = path.parent / "metrics" / f"{path.stem}.json"
    if side.is_file():
        try:
            data = json.loads(side.read_text())
        except ValueError:
            log.warning("ignoring unreadable metrics file %s", side)
            data = {}
        data = data.get("metrics", data) if isinstance(data, dict) else {}
        for ds, vals in data.items():
            if ds in EVAL_DATASETS and isinstance(vals, dict) and ds not in metrics:
                metrics[ds] = dict(vals)
                sources[ds] = str(side)
    return metrics, sources


# ----------------------------------------------------------------------------------------------- deltas


DELTA_FIELDS = ("params_total", "params_encoder", "params_regressor", "macs", "latency_ms", "latency_b32_ms",
                "gpu_latency_ms", "onnx_latency_ms", "peak_mem_mb", "metrics")


def compute_delta(row: dict, base: dict) -> dict:
    """{field: {abs, pct, better}} for every numeric field both rows have, nested like the row.

    abs = row - baseline; pct = abs / baseline * 100 (None at a zero baseline); better is True/False, or None
    when equal. Errors, cost and memory: lower is better; LSP accuracies and F1: higher is better.
    """
    out = {}
    for key in DELTA_FIELDS:
        d = _delta_of(row.get(key), base.get(key), key)
        if d is not None:
            out[key] = d
    mem, mem0 = row.get("peak_mem_mb") or {}, base.get("peak_mem_mb") or {}
    for phase in ("infer", "train"):
        # A measured peak against an estimate is no comparison: fall back to the two estimates.
        if mem.get(f"{phase}_source") != mem0.get(f"{phase}_source") and phase in out.get("peak_mem_mb", {}):
            est = _delta_of(mem.get(f"{phase}_estimate"), mem0.get(f"{phase}_estimate"), phase)
            if est is None:
                del out["peak_mem_mb"][phase]
            else:
                out["peak_mem_mb"][phase] = est | {"compares": "estimates"}
    return out


def _delta_of(value: Any, base: Any, key: str) -> dict | None:
    if isinstance(value, dict) and isinstance(base, dict):
        nested = {k: _delta_of(value[k], base[k], k) for k in value
                  if k in base and k not in NOT_COMPARED and not k.startswith("n_")}  # n, n_pve: sample counts
        nested = {k: v for k, v in nested.items() if v is not None}
        return nested or None
    if not (_is_number(value) and _is_number(base)):
        return None
    diff = value - base
    pct = diff / base * 100.0 if base else None
    better = None if diff == 0 else (diff > 0) == (key in HIGHER_IS_BETTER)
    return {"abs": diff, "pct": pct, "better": better}


RATIOS = {  # name -> (path in the row, title, column key): baseline / row, so above 1 means smaller or faster
    "params": (("params_total",), "params ÷", "params"),
    "macs": (("macs",), "MACs ÷", "macs_g"),
    "latency_b1": (("latency_ms",), "speed-up b1", "latency_ms"),
    "latency_b32": (("latency_b32_ms",), "speed-up b32", "latency_b32_ms"),
    "onnx_latency_b1": (("onnx_latency_ms",), "ORT speed-up b1", "onnx_latency_ms"),
    "infer_mem": (("peak_mem_mb", "infer"), "infer mem ÷", "infer_mem_mb"),
    "train_mem": (("peak_mem_mb", "train"), "train mem ÷", "train_mem_mb"),
}


def compute_ratios(row: dict, base: dict) -> dict[str, float]:
    """Baseline / row for the cost columns: how many times smaller or faster (MACs ÷ is the speed-up MACs predict)."""
    out = {}
    for name, (path, _, _) in RATIOS.items():
        v, v0 = _get(row, path), _get(base, path)
        if _is_number(v) and _is_number(v0) and v > 0:
            out[name] = v0 / v
    return out


def _ratio_table(rows: list[dict], notes: _Footnotes) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the speed-up table: measured speed-ups next to the reduction MACs predict.
    A ratio inherits the footnote of a noisy timing in its row or in the baseline's."""
    others = [r for r in rows if r["checkpoint"] != r.get("baseline") and r.get("ratio")]
    names = [n for n in RATIOS if any(n in r["ratio"] for r in others)]
    base = {r["checkpoint"]: r for r in rows if r["checkpoint"] == r.get("baseline")}

    def cell(r: dict, n: str) -> str:
        if n not in r["ratio"]:
            return DASH
        key = RATIOS[n][2]
        reasons = [x.get("notes", {}).get(key, "") for x in (r, base.get(r.get("baseline"), {}))]
        noisy = next((why for why in reasons if why.startswith("noisy")), "")
        return f"{r['ratio'][n]:.2f}x" + (notes.mark(noisy) if noisy else "")

    body = [[r["stage"], r["run"]] + [cell(r, n) for n in names] for r in others]
    return ["stage", "run"] + [RATIOS[n][1] for n in names], body


def _note_sample_mismatch(row: dict, base: dict) -> None:
    for ds, vals in row["metrics"].items():
        n, n0 = vals.get("n"), _get(base, ("metrics", ds, "n"))
        if n is not None and n0 is not None and n != n0:
            for col in COLUMNS:
                if col.path[:2] == ("metrics", ds) and _get(row, col.path) is not None:
                    row["notes"][col.key] = f"{DATASET_TITLES.get(ds, ds)}: {n} samples vs {n0} for the baseline"


def _note_resolution_mismatch(row: dict, base: dict) -> None:
    res, res0 = row.get("img_res"), base.get("img_res")
    if res and res0 and res != res0:
        for col in COST_COLUMNS:
            if col.key not in ("params",) and _is_number(_get(row, col.path)):
                row["notes"][col.key] = f"profiled at {res} px, the baseline at {res0} px"


# ----------------------------------------------------------------------------------------------- cells


def _num(x: float, digits: int, sign: str = "") -> str:
    """Fixed decimals, but three significant digits below 0.1 so tiny models do not print as 0.000."""
    if x != 0 and abs(x) < 0.1 and digits <= 3:
        return f"{x:{sign}.3g}"
    return f"{x:{sign},.{digits}f}"


def _fmt(value: float, col: Column) -> str:
    return _num(value * col.scale, col.digits)


def _fmt_delta(d: dict, col: Column) -> str:
    a = d["abs"] * col.scale
    s = _num(a, col.digits, "+").replace("-", "−")
    if d["pct"] is not None:
        s += f" ({d['pct']:+.1f}%)".replace("-", "−")
    return s


class _Footnotes:
    """Numbers reasons in order of first use."""

    def __init__(self):
        self.reasons: list[str] = []

    def mark(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return str(self.reasons.index(reason) + 1).translate(SUPERSCRIPTS)


@dataclass(frozen=True)
class _Cell:
    value: str
    delta: str = ""
    better: bool | None = None


def _column_marks(rows: list[dict], cols: list[Column], notes: _Footnotes) -> dict[str, str]:
    """A note every row of a column shares goes on the header once, not on each cell."""
    marks = {}
    for c in cols:
        reasons = {r.get("notes", {}).get(c.key) for r in rows}
        if len(reasons) == 1 and None not in reasons and any(_is_number(_get(r, c.path)) for r in rows):
            marks[c.key] = notes.mark(reasons.pop())
    return marks


def _cell(row: dict, col: Column, notes: _Footnotes, *, on_header: frozenset = frozenset()) -> _Cell:
    value = _get(row, col.path)
    reason = None if col.key in on_header else row.get("notes", {}).get(col.key)
    mark = notes.mark(reason) if reason else ""
    if not _is_number(value):
        return _Cell(DASH + mark)
    d = _get(row.get("delta", {}), col.path)
    if not isinstance(d, dict) or "abs" not in d:
        return _Cell(_fmt(value, col) + mark)
    delta = _fmt_delta(d, col)
    if d.get("compares") == "estimates":
        delta += notes.mark("delta of the two estimates: one side has no measured peak")
    return _Cell(_fmt(value, col) + mark, delta, d["better"])


def visible_columns(rows: list[dict]) -> list[Column]:
    """Columns with a value in at least one row; the rest go into the table's footer."""
    return [c for c in COLUMNS if any(_is_number(_get(r, c.path)) for r in rows)]


def _hidden_reasons(rows: list[dict]) -> list[str]:
    shown = {c.key for c in visible_columns(rows)}
    by_reason: dict[str, list[str]] = {}
    for col in COLUMNS:
        if col.key in shown:
            continue
        reasons = {r["notes"][col.key] for r in rows if r.get("notes", {}).get(col.key)}
        if not reasons:  # e.g. the ONNX column when it was not asked for
            continue
        by_reason.setdefault("; ".join(sorted(reasons)), []).append(col.title)
    return [f"not shown ({why}): {', '.join(titles)}" for why, titles in by_reason.items()]


def _memory_source(mem: dict, phase: str) -> str:
    if mem.get(f"{phase}_source") == "measured":
        return f"measured ({mem.get('method', 'method not recorded')})"
    if phase == "train":
        return "estimated (parameters, gradients, Adam state, tensors saved for backward)"
    return "estimated (parameters, buffers, largest layer input+output)"


def _context_lines(rows: list[dict]) -> list[str]:
    """How the cost columns were measured, from the first profiled row."""
    lines = []
    prof = next((r for r in rows if r.get("latency")), None)
    if prof:
        lat = prof["latency"]
        b1 = lat.get("b1", {})
        how = "all rows timed in alternation" if lat.get("method") == "interleaved" else "each checkpoint timed alone"
        lines.append(f"latency: median of {b1.get('repeats', '?')} runs after warm-up on {lat.get('device', '?')}, "
                     f"{lat.get('threads', '?')} thread(s), input {prof.get('img_res', '?')} px ({how})")
    mem = next((r["peak_mem_mb"] for r in rows if r.get("peak_mem_mb")), None)
    if mem:
        lines.append(f"memory: inference at batch 1 {_memory_source(mem, 'infer')}; training step at batch "
                     f"{mem.get('train_batch', '?')} {_memory_source(mem, 'train')}")
    counter = next((r["macs_counter"] for r in rows if r.get("macs_counter")), None)
    if counter:
        lines.append(f"MACs: {counter}")
    lines.append("deltas to the baseline: absolute (percent); green better, red worse "
                 "(errors, cost and memory: lower is better; LSP accuracy and F1: higher is better)")
    return lines


# ----------------------------------------------------------------------------------------------- renderers


def render_table(rows: list[dict], *, width: int | None = None, color: bool = True) -> str:
    """Rich table(s) as text (ANSI colours when `color`); to print on a console use print_table."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width or 200, force_terminal=color, color_system="standard" if color else None,
                      highlight=False)
    print_table(rows, console=console)
    return buf.getvalue()


def print_table(rows: list[dict], *, console=None) -> None:
    """Rich table(s), a value and its delta per cell; columns are split over several tables to fit the console."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(highlight=False)
    cols = visible_columns(rows)
    notes = _Footnotes()
    col_marks = _column_marks(rows, cols, notes)
    cells = {c.key: [_cell(r, c, notes, on_header=frozenset(col_marks)) for r in rows] for c in cols}
    row_marks = [notes.mark(r["notes"]["row"]) if r.get("notes", {}).get("row") else "" for r in rows]
    lead = 7 + max(len(r["stage"]) + 1 for r in rows) + max(len(r["run"]) for r in rows)
    widths = {c.key: max([len(x) for cell in cells[c.key] for x in (cell.value, cell.delta)]
                         + [len(w) for w in _header(c, col_marks).split("\n")]) + 3 for c in cols}
    titles = {"cost": "cost", "3d": "3D pose (mm)", "lsp": "LSP segmentation"}
    chunks = _pack(cols, widths, console.width - lead)
    for chunk in chunks:
        groups = list(dict.fromkeys(titles[c.group] for c in chunk))
        table = Table(title="compress report" + ("" if len(chunks) == 1 else ": " + ", ".join(groups)),
                      show_lines=True)
        table.add_column("stage", no_wrap=True)
        table.add_column("run", no_wrap=True)
        for c in chunk:
            table.add_column(_header(c, col_marks), justify="right", no_wrap=True)
        for i, r in enumerate(rows):
            out = []
            for c in chunk:
                cell = cells[c.key][i]
                text = Text(cell.value)
                if cell.delta:
                    style = "" if cell.better is None else ("green" if cell.better else "red")
                    text.append("\n" + cell.delta, style=style)
                out.append(text)
            table.add_row(Text(r["stage"] + row_marks[i]), Text(r["run"]), *out)  # Text: no markup in names
        console.print(table)
    head, body = _ratio_table(rows, notes)
    if body:
        table = Table(title="speed-up and size vs the baseline (baseline / row; above 1 is smaller or faster)")
        for i, h in enumerate(head):
            table.add_column(h, justify="left" if i < 2 else "right", no_wrap=True)
        for line in body:
            table.add_row(*(Text(x) for x in line))
        console.print(table)
    print_recovery(rows, console)
    for line in _footer(rows, notes):
        console.print(Text(line))


def print_recovery(rows: list[dict], console) -> None:
    """The recovery table (compress.recovery) on a rich console, when a fine-tuned row follows a pruned one."""
    from rich.table import Table
    from rich.text import Text

    head, body = recovery_table(recovery_rows(rows))
    if not body:
        return
    table = Table(title=RECOVERY_CAPTION)
    for i, h in enumerate(head):
        table.add_column(h, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for line in body:
        table.add_row(*(Text(x) for x in line))
    console.print(table)


def _header(col: Column, marks: dict[str, str]) -> str:
    """Two-line headers keep the columns narrow: "3DPW MPJPE" -> "3DPW" over "MPJPE"."""
    head, _, tail = col.title.rpartition(" ")
    tail += marks.get(col.key, "")
    return f"{head}\n{tail}" if head else tail


def _pack(cols: list[Column], widths: dict[str, int], room: int) -> list[list[Column]]:
    """All columns in one table if they fit, else one table per group; a group too wide alone is split
    between datasets, never inside one (MPJPE and PA stay side by side)."""
    if sum(widths[c.key] for c in cols) <= room:
        return [cols]
    chunks: list[list[Column]] = []
    for group in dict.fromkeys(c.group for c in cols):
        clusters: dict[tuple, list[Column]] = {}
        for c in (c for c in cols if c.group == group):
            clusters.setdefault(c.path[:2] if c.path[0] == "metrics" else (c.key,), []).append(c)
        cur, used = [], 0
        for cluster in clusters.values():
            w = sum(widths[c.key] for c in cluster)
            if cur and used + w > room:
                chunks.append(cur)
                cur, used = [], 0
            cur += cluster
            used += w
        chunks.append(cur)
    return chunks


def _footer(rows: list[dict], notes: _Footnotes) -> list[str]:
    lines = [f"{str(i + 1).translate(SUPERSCRIPTS)} {why}" for i, why in enumerate(notes.reasons)]
    lines += _hidden_reasons(rows)
    lines += _context_lines(rows)
    for base in (r for r in rows if r.get("checkpoint") and r["checkpoint"] == r.get("baseline")):
        lines.append(f"baseline: {base['checkpoint']}" + (f" ({base['model']})" if base.get("model") else ""))
    return lines


def render_markdown(rows: list[dict]) -> str:
    """One Markdown table in the study's Table V layout; deltas under the values."""
    cols = visible_columns(rows)
    notes = _Footnotes()
    col_marks = _column_marks(rows, cols, notes)
    lines = ["# compress report", "",
             "| stage | run | " + " | ".join(c.title + col_marks.get(c.key, "") for c in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for r in rows:
        mark = notes.mark(r["notes"]["row"]) if r.get("notes", {}).get("row") else ""
        parts = []
        for c in cols:
            cell = _cell(r, c, notes, on_header=frozenset(col_marks))
            text = cell.value
            if cell.delta:
                arrow = "" if cell.better is None else (" ▲" if cell.better else " ▼")
                text += f"<br>{cell.delta}{arrow}"
            parts.append(text)
        lines.append(f"| {r['stage']}{mark} | {r['run']} | " + " | ".join(parts) + " |")
    head, body = _ratio_table(rows, notes)
    if body:
        lines += ["", "Speed-up and size against the baseline (baseline / row; above 1 is smaller or faster; "
                  "MACs ÷ is the speed-up the MACs predict):", "",
                  "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
        lines += ["| " + " | ".join(line) + " |" for line in body]
    recovered = render_recovery_markdown(rows)
    if recovered:
        lines += ["", recovered.rstrip("\n")]
    lines.append("")
    lines += [f"- {line}" for line in _footer(rows, notes)]
    lines.append("- ▲ better than the baseline, ▼ worse")
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict]) -> str:
    """One line per row; units in the header keys; deltas as <key>_delta and <key>_delta_pct."""
    cols = COLUMNS + EXTRA_CSV_COLUMNS
    header = ["run", "stage", "model", "checkpoint", "parent"]
    for c in cols:
        header += [c.key, f"{c.key}_delta", f"{c.key}_delta_pct"]
    header += [f"{ds.replace('-', '_')}_n" for ds in EVAL_DATASETS]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        line = [r["run"], r["stage"], r.get("model") or "", r["checkpoint"], r.get("parent") or ""]
        for c in cols:
            value, d = _get(r, c.path), _get(r.get("delta", {}), c.path)
            d = d if isinstance(d, dict) and "abs" in d else {}
            scale = c.scale if c.csv_scale is None else c.csv_scale
            line += [_csv_num(value, scale), _csv_num(d.get("abs"), scale), _csv_num(d.get("pct"), 1.0)]
        line += [_csv_num(_get(r, ("metrics", ds, "n")), 1.0) for ds in EVAL_DATASETS]
        writer.writerow(line)
    return buf.getvalue()


def _csv_num(v: Any, scale: float) -> str:
    if not _is_number(v):
        return ""
    if isinstance(v, int) and scale == 1.0:
        return str(v)
    return f"{float(v) * scale:.10g}"  # 10 significant digits: no 1.5000000000000002 from the unit scale


def render_json(rows: list[dict]) -> str:
    """The rows as strict JSON: non-finite numbers (a NaN metric) become null."""
    from compress.io import finite_json

    return json.dumps(finite_json(rows), indent=2, default=str, allow_nan=False)


# ----------------------------------------------------------------------------------------------- plots


def make_plots(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """PNG plots: params vs PA-MPJPE with the Pareto front, latency bars, training curves; returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fn in (plot_pareto, plot_latency):
        path = fn(rows, out_dir)
        if path:
            written.append(path)
    run_dirs = {Path(r["checkpoint"]).parent for r in rows if r.get("checkpoint")}
    for run_dir in sorted(run_dirs):
        path = plot_training_curve(run_dir, out_dir)
        if path:
            written.append(path)
    return written


def _point_labels(rows: list[dict]) -> list[str]:
    stages = [r["stage"] for r in rows]
    return [s if stages.count(s) == 1 else f"{s} ({r['run']})" for s, r in zip(stages, rows)]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (lower is better on both), by increasing x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def plot_pareto(rows: list[dict], out_dir: Path) -> Path | None:
    import matplotlib.pyplot as plt

    datasets = [ds for ds in EVAL_DATASETS if ds != "lsp"
                and any(_is_number(_get(r, ("metrics", ds, "pa_mpjpe_mm"))) and _is_number(r.get("params_total"))
                        for r in rows)]
    if not datasets:
        log.info("no PA-MPJPE with a parameter count: params-vs-error plot skipped")
        return None
    labels = _point_labels(rows)
    big = max(r["params_total"] for r in rows if _is_number(r.get("params_total"))) >= 1e5
    unit, div = ("M", 1e6) if big else ("K", 1e3)
    ncol = min(2, len(datasets))
    nrow = math.ceil(len(datasets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 4.6 * nrow), squeeze=False)
    for ax, ds in zip(axes.flat, datasets):
        idx = [i for i, r in enumerate(rows)
               if _is_number(_get(r, ("metrics", ds, "pa_mpjpe_mm"))) and _is_number(r.get("params_total"))]
        pts = [(rows[i]["params_total"] / div, rows[i]["metrics"][ds]["pa_mpjpe_mm"]) for i in idx]
        front = pareto_front(pts)
        if len(front) > 1:
            fx, fy = zip(*[pts[k] for k in front])
            ax.step(fx, fy, where="post", color="tab:orange", lw=1.5, zorder=1, label="Pareto front")
        for k, (i, (x, y)) in enumerate(zip(idx, pts)):
            on_front = k in front
            ax.scatter([x], [y], s=70 if on_front else 45, zorder=2,
                       color="tab:orange" if on_front else "white", edgecolors="tab:blue" if not on_front else "black",
                       linewidths=1.2)
            ax.annotate(labels[i], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
        ax.set_title(f"{DATASET_TITLES.get(ds, ds)}: parameters vs PA-MPJPE")
        ax.set_xlabel(f"parameters ({unit})")
        ax.set_ylabel("PA-MPJPE (mm, lower is better)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.15)
        ax.scatter([], [], s=70, color="tab:orange", edgecolors="black", label="on the front")
        if len(front) < len(pts):
            ax.scatter([], [], s=45, color="white", edgecolors="tab:blue", label="dominated")
        ax.legend(loc="best", fontsize=8)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    fig.tight_layout()
    path = out_dir / "params_vs_pa_mpjpe.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_latency(rows: list[dict], out_dir: Path) -> Path | None:
    """Horizontal bars of the median latency with p10-p90 whiskers, the speed-up over each row's baseline, and a
    diamond where the latency would be if time scaled with MACs (baseline latency x MACs ratio)."""
    import matplotlib.pyplot as plt

    idx = [i for i, r in enumerate(rows) if _is_number(r.get("latency_ms"))]
    if not idx:
        log.info("no latency in any row: latency plot skipped")
        return None
    labels = _point_labels(rows)
    bases = {r["checkpoint"]: r for r in rows if r["checkpoint"] == r.get("baseline")}
    panels = [("b1", "batch 1")] + ([("b32", "batch 32")] if any(_get(rows[i], ("latency", "b32")) for i in idx)
                                    else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 0.55 * len(idx) + 2.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        bars = []  # (label, median, p10, p90, speed-up or None, MACs-predicted latency or None)
        for i in idx:
            r = rows[i]
            stats = _get(r, ("latency", key)) or ({"median_ms": r["latency_ms"]} if key == "b1" else None)
            if not stats:
                continue
            m = stats["median_ms"]
            base = bases.get(r.get("baseline")) or {}
            ref = _get(base, ("latency", key, "median_ms"))
            macs, macs0 = r.get("macs"), base.get("macs")
            expected = ref * macs / macs0 if _is_number(ref) and _is_number(macs) and _is_number(macs0) and macs0 \
                else None
            bars.append((labels[i], m, stats.get("p10_ms", m), stats.get("p90_ms", m),
                         ref / m if _is_number(ref) and m and base is not r else None,
                         expected if base is not r else None))
        y = list(range(len(bars)))[::-1]
        med = [b[1] for b in bars]
        ax.barh(y, med, xerr=[[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]], color="tab:blue",
                alpha=0.8, capsize=3, label="median (p10-p90)")
        exp = [(yy, b[5]) for yy, b in zip(y, bars) if b[5] is not None]
        if exp:
            ax.scatter([e[1] for e in exp], [e[0] for e in exp], marker="D", s=28, color="tab:orange",
                       edgecolors="black", zorder=3, label="if time scaled with MACs")
        for yy, b in zip(y, bars):
            text = (f"{b[1]:,.0f}" if b[1] >= 100 else f"{b[1]:.3g}") + " ms" + (f"  {b[4]:.2f}x" if b[4] else "")
            ax.text(max(b[3], b[5] or 0), yy, "  " + text, va="center", fontsize=8)
        ax.set_yticks(y, [b[0] for b in bars])
        ax.set_xlabel("latency (ms); text: median and speed-up over the baseline")
        lat = next((rows[i]["latency"] for i in idx if rows[i].get("latency")), {})
        how = "rows timed in alternation" if lat.get("method") == "interleaved" else "each timed alone"
        ax.set_title(f"{title} on {lat.get('device', 'cpu')}, {lat.get('threads', '?')} thread(s), {how}", fontsize=10)
        ax.set_xlim(0, max(max(b[3], b[5] or 0) for b in bars) * 1.45)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out_dir / "latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


TOTAL_KEYS = ("total", "loss", "loss_total", "total_loss", "train/loss")
STEP_KEYS = ("step", "global_step", "iter", "iteration")
NOT_LOSSES = frozenset({"epoch", "step", "global_step", "iter", "iteration", "lr", "images_per_s", "time_s", "steps",
                        "peak_train_mem_mb", "world", "rank"})


def read_log(path: str | Path) -> list[dict]:
    """Records of a log.jsonl; unreadable lines (e.g. a half-written last line) are skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def training_curve(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{"loss": (steps, totals), term: (steps, values), ...} from the per-step records of a log.jsonl.

    The total is `total` (our training loop) or `loss`; every other numeric field except bookkeeping (epoch, lr,
    images/s, ...) is a loss term. Steps logged twice (an epoch redone after a resume) keep the last value.
    """
    # per-step records; a run shorter than log_every has only per-epoch means
    steps_only = ([r for r in records if r.get("kind") == "step"] or [r for r in records if r.get("kind") == "epoch"]
                  or records)
    by_name: dict[str, dict[float, float]] = {}
    for n, rec in enumerate(steps_only):
        step = next((rec[k] for k in STEP_KEYS if _is_number(rec.get(k))), n)
        flat = dict(rec)
        for key in ("losses", "loss_terms"):
            if isinstance(rec.get(key), dict):
                flat.update(rec[key])
        for key, value in flat.items():
            if key in NOT_LOSSES or not _is_number(value):
                continue
            by_name.setdefault("loss" if key in TOTAL_KEYS else key, {})[step] = value
    return {name: (sorted(v), [v[k] for k in sorted(v)]) for name, v in by_name.items()}


def _epoch_starts(records: list[dict], *, most: int = 30) -> list[tuple[float, int]]:
    """(first step, epoch) where the step records' epoch changes; none when there would be too many to read."""
    out, last = [], None
    for rec in records:
        if rec.get("kind", "step") == "step" and _is_number(rec.get("epoch")) and _is_number(rec.get("step")):
            if last is not None and rec["epoch"] != last:
                out.append((rec["step"], int(rec["epoch"])))
            last = rec["epoch"]
    return out if len(out) <= most else []


def plot_training_curve(run_dir: Path, out_dir: Path) -> Path | None:
    import matplotlib.pyplot as plt

    log_file = Path(run_dir) / "log.jsonl"
    if not log_file.is_file():
        return None
    records = read_log(log_file)
    series = training_curve(records)
    if "loss" not in series:
        log.info("%s has no loss records: training-curve plot skipped", log_file)
        return None
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    steps, values = series["loss"]
    marker = "o" if len(steps) <= 20 else None  # a handful of steps: show the points, a line alone may vanish
    ax.plot(steps, values, color="black", lw=1.8, marker=marker, label="total (weighted)")
    for name, (s, v) in sorted(series.items()):
        if name != "loss" and any(v):  # terms switched off by their weight stay flat at 0: not worth a line
            ax.plot(s, v, lw=0.9, alpha=0.7, marker=marker, ms=4, label=name.replace("loss_", "").replace("loss/", ""))
    for step, epoch in _epoch_starts(records):
        ax.axvline(step, color="grey", lw=0.6, ls=":", zorder=0)
        ax.annotate(f"ep {epoch}", (step, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=7, color="grey")
    positive = [v for _, vs in series.values() for v in vs if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    phases = sorted({str(r.get("phase")) for r in records if r.get("phase")})
    means = not any(r.get("kind") == "step" for r in records) and any(r.get("kind") == "epoch" for r in records)
    ax.set_title(f"training curve: {Path(run_dir).name}" + (f" ({', '.join(phases)})" if phases else "")
                 + (", per-epoch means" if means else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="loss", title_fontsize=8)
    fig.tight_layout()
    path = out_dir / f"curve_{Path(run_dir).name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------- entry point


RENDERERS: dict[str, Callable[[list[dict]], str]] = {"md": render_markdown, "csv": render_csv, "json": render_json}


def run_report(
    runs: Iterable[str | Path] | None = None, *, baseline: str | Path | None = None, fmt: str = "table",
    plots: str | Path | None = None, retime: bool = False, runs_dir: str | Path = "runs", device: str = "cpu",
    onnx: bool = False, interleave: bool = False, width: int | None = None, color: bool = True,
) -> tuple[list[dict], str]:
    """Collect the rows and render them: table/csv/json give the text; md writes runs_dir/report.md, gives its path."""
    if fmt not in ("table", *RENDERERS):
        raise UserError(f"unknown report format {fmt!r}: choose table, md, csv or json")
    rows = collect_rows(runs, baseline=baseline, retime=retime, device=device, runs_dir=runs_dir, onnx=onnx,
                        interleave=interleave)
    if plots:
        for path in make_plots(rows, plots):
            log.info("wrote %s", path)
    if fmt == "table":
        return rows, render_table(rows, width=width, color=color)
    text = RENDERERS[fmt](rows)
    if fmt == "md":
        out = Path(runs_dir) / "report.md"
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(out)
        return rows, str(out)
    return rows, text
