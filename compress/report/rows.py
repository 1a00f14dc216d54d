"""The rows of a report: one per checkpoint of a pruning chain, with deltas and ratios to the chain's baseline.

Rows come from run directories and the `parent` links inside the checkpoints (compress.runs walks them), so a P2
run shows the whole chain baseline -> P1 -> P1+FT(n) -> P2 -> P2+FT(m). Numbers are read, never recomputed:
metrics from the checkpoint metadata (or `metrics/<stem>.json` of the run), cost from the cached profile
(compress.report.costs). Deltas are computed here and never stored.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable

import torch

from compress.constants import EVAL_DATASETS
from compress.errors import UserError
from compress.report.columns import COLUMNS, COST_COLUMNS, DATASET_TITLES, RATIOS, get_path, is_number
from compress.report.costs import choose_memory, cuda_provider_missing, interleave_latency, row_costs
from compress.report.int8 import with_int8_rows
from compress.report.noise import mark_noise
from compress.runs import (FINETUNED, PRUNED, RUNS_DIR, Lineage, Node, discover_runs, eval_dir, resolve_checkpoint,
                           is_trained, metrics_file, parent_ref, read_meta, resolve_run, stage_checkpoints)
from compress.shipped import noise_band

log = logging.getLogger(__name__)

HIGHER_IS_BETTER = frozenset({"fb_acc", "fb_f1", "parts_acc", "parts_f1"})
NOT_COMPARED = frozenset({"n", "train_batch", "repeats", "threads", "img_res", "batch"})
VIRTUAL_ROOT = "(unpruned start)"


# ----------------------------------------------------------------------------------------------- stages


def _named(path: Path, stage_file: str) -> bool:
    """The file is a stage file of that kind (its name starts with the stage file's stem)."""
    return path.name.startswith(Path(stage_file).stem)


def _kind(path: Path, meta: dict) -> str:
    """baseline | prune | finetune: what step produced this checkpoint."""
    stage = str(meta.get("stage") or "").lower()
    if stage.startswith("ft") or _named(path, FINETUNED):
        return "finetune"
    if re.match(r"p\d", stage) or stage.startswith("prun") or _named(path, PRUNED) or "prune" in meta:
        return "prune"
    if is_trained(path, meta) or parent_ref(meta) is None:
        return "baseline"
    return "finetune"


def _ft_label(meta: dict) -> str:
    """FT(N) as in the study, with "+KD" when the fine-tuning distilled from a teacher."""
    stage = str(meta.get("stage") or "")
    kd = "+KD" if meta.get("distill") else ""
    if stage.upper().startswith("FT"):
        return stage + kd
    epochs = meta.get("epochs") or get_path(meta, ("recipe", "finetune", "epochs"))
    return (f"FT({epochs})" if epochs else "FT") + kd


def stage_labels(chain: list[Node]) -> list[str]:
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


def _baseline_path(baseline: str | Path, runs_dir: Path) -> Path:
    return resolve_checkpoint(resolve_run(baseline, runs_dir=runs_dir), what="--baseline").resolve()


# ----------------------------------------------------------------------------------------------- rows


def collect_rows(
    runs: Iterable[str | Path] | None = None, *, baseline: str | Path | None = None, retime: bool = False,
    device: str = "cpu", runs_dir: str | Path = RUNS_DIR, onnx: bool = False, interleave: bool = False,
) -> list[dict]:
    """Rows (JSON contract of DESIGN.md) for the baseline, each pruned model and each fine-tuned stage.

    runs: run directories, run names under runs_dir, or checkpoint files; default all runs, latest first.
    baseline: the reference checkpoint (or run dir) for deltas; default the root of each chain of parents.
    interleave: time all rows of a chain again, in alternation, instead of using each checkpoint's cached latency.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA on this machine; profile on the CPU with --device cpu")
    runs_dir = Path(runs_dir)
    targets = [resolve_run(r, runs_dir=runs_dir) for r in runs] if runs else discover_runs(runs_dir)
    if not targets:
        raise UserError(f"no runs under {runs_dir}/: run `compress prune RECIPE` first, or name a run directory")
    lineage = Lineage(runs_dir)
    base_path = _baseline_path(baseline, runs_dir) if baseline else None

    # Each group is one baseline and the tree of checkpoints hanging from it.
    groups: dict[Path | None, dict[Path, tuple[str, int]]] = {}
    order: dict[Path, float] = {}
    for rank, target in enumerate(targets):
        for ckpt in (stage_checkpoints(target) if target.is_dir() else [target]):
            chain = lineage.chain(ckpt)
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
            base_row = _virtual_baseline(lineage.node(root.parent), runs_dir=runs_dir, onnx=onnx)
        else:
            base_row = _row(lineage.node(root), "baseline", runs_dir=runs_dir, retime=retime, device=device,
                            onnx=onnx, foreign=lineage.foreign_model(root))
        rows.append(base_row)
        band = noise_band(base_row.get("checkpoint"))  # the baseline card's, or None
        for path in _tree_order(members, lineage, root, order):
            if path == root:
                continue
            label, _ = members[path]
            rows.append(_row(lineage.node(path), label, runs_dir=runs_dir, retime=retime, device=device, onnx=onnx,
                             foreign=lineage.foreign_model(path)))
        rows[start:] = with_int8_rows(rows[start:], retime=retime, onnx=onnx)  # <run>/quantized.onnx: +INT8
        group = rows[start:]
        choose_memory(group)
        if interleave:
            interleave_latency(group, device=device)
        for row in group:
            row["baseline"] = base_row["checkpoint"]
            row["delta"] = {} if row is base_row else compute_delta(row, base_row)
            if band is not None:
                mark_noise(row["delta"], band)
                row["noise"] = band
            row["ratio"] = compute_ratios(row, base_row)
            _note_sample_mismatch(row, base_row)
            _note_resolution_mismatch(row, base_row)
    return rows


def _virtual_root(first: Path) -> Path:
    """The group key of a chain whose start was never saved (pruned from a fresh model, or a lost parent)."""
    return first / VIRTUAL_ROOT


def _virtual_baseline(first: Node, *, runs_dir: Path, onnx: bool) -> dict:
    """A baseline row from the first pruned checkpoint's own record of the model before pruning (params, MACs)."""
    before = get_path(first.meta, ("prune", "before")) or {}
    model = first.meta.get("model") if isinstance(first.meta.get("model"), dict) else {}
    why = (f"baseline checkpoint {first.parent_ref} not found" if first.parent_ref else
           f"no baseline checkpoint: {first.path.name} was pruned from a freshly initialised model")
    row: dict[str, Any] = {
        "run": _run_name(first.path, runs_dir), "stage": "baseline", "checkpoint": None,
        "model": model.get("name"), "parent": None, "created": None, "img_res": None, "latency": None,
        "params_total": before.get("params_total"), "params_encoder": before.get("params_encoder"),
        "params_regressor": before.get("params_regressor"), "macs": before.get("macs"),
        "latency_ms": None, "latency_b32_ms": None, "gpu_latency_ms": None, "onnx_latency_ms": None,
        "onnx_latency_b32_ms": None, "onnx_cuda_latency_ms": None,
        "peak_mem_mb": None, "metrics": {}, "metrics_source": {},
        "notes": {"row": why + ("; params and MACs from its prune summary" if before else "")},
    }
    skip = {"gpu_latency_ms"} if not torch.cuda.is_available() else set()
    skip |= set() if onnx else {"onnx_latency_ms", "onnx_latency_b32_ms", "onnx_cuda_latency_ms"}
    cuda_ort_why = cuda_provider_missing() if onnx else ""
    skip |= {"onnx_cuda_latency_ms"} if cuda_ort_why else set()
    for col in COLUMNS:
        if not is_number(get_path(row, col.path)) and col.key not in skip:
            row["notes"][col.key] = "no baseline checkpoint to measure"
    if not torch.cuda.is_available():
        row["notes"]["gpu_latency_ms"] = "no CUDA"
    if cuda_ort_why:
        row["notes"]["onnx_cuda_latency_ms"] = cuda_ort_why
    return row


def _tree_order(members: dict[Path, tuple[str, int]], lineage: Lineage, root: Path, order: dict[Path, float]):
    """Depth-first from the root, so every descendant follows its parent; siblings from the latest run first."""
    children: dict[Path | None, list[Path]] = {}
    for path in members:
        parent = lineage.node(path).parent if path.name != VIRTUAL_ROOT else None
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


def _row(node: Node, stage: str, *, runs_dir: Path, retime: bool, device: str, onnx: bool,
         foreign: dict | None = None) -> dict:
    meta = node.meta
    notes: dict[str, str] = {}
    model = meta.get("model") if isinstance(meta.get("model"), dict) else (foreign or {})
    row: dict[str, Any] = {
        "run": _run_name(node.path, runs_dir),
        "stage": stage,
        "checkpoint": str(node.path),
        "model": model.get("name"),
        "parent": str(node.parent) if node.parent else node.parent_ref,
        "created": meta.get("created"),
        "foreign": foreign,  # the model config recorded for SPIN's file (it does not name its model), else None
    }
    if node.parent_ref and node.parent is None:
        notes["row"] = f"parent checkpoint {node.parent_ref} not found"
    costs, cost_notes = row_costs(node.path, retime=retime, device=device, onnx=onnx, foreign=foreign)
    row.update(costs)
    notes.update(cost_notes)
    row["metrics"], sources = _metrics(node.path, meta)
    row["metrics_source"] = sources
    for col in COLUMNS:
        if col.path[0] == "metrics" and get_path(row, col.path) is None:
            notes[col.key] = "not evaluated" if col.path[1] not in row["metrics"] else "not available for this dataset"
    row["notes"] = notes
    return row


def checkpoint_metrics(path: str | Path) -> dict:
    """{dataset: {metric: value}} recorded for a checkpoint (its metadata, then `metrics/<stem>.json` beside it)."""
    path = Path(path)
    return _metrics(path, read_meta(path))[0]


def _metrics(path: Path, meta: dict) -> tuple[dict, dict]:
    """Eval results of a checkpoint: its metadata first, then `metrics/<stem>.json` in its run directory, then the
    summary `compress eval CKPT` wrote beside it (`eval_<stem>/summary.json`, when newer than the file: how SPIN's
    checkpoint, which records no metrics, gets its baseline row's)."""
    metrics: dict[str, dict] = {}
    sources: dict[str, str] = {}
    for ds, vals in (meta.get("metrics") or {}).items():
        if isinstance(vals, dict):
            metrics[ds] = dict(vals)
            sources[ds] = "checkpoint"
    summary = eval_dir(path) / "summary.json"
    fresh = summary.is_file() and summary.stat().st_mtime >= path.stat().st_mtime
    for side in [metrics_file(path.parent, path.name)] + ([summary] if fresh else []):
        for ds, vals in _read_metrics(side).items():
            if ds in EVAL_DATASETS and isinstance(vals, dict) and ds not in metrics:
                metrics[ds] = dict(vals)
                sources[ds] = str(side)
    return metrics, sources


def _read_metrics(side: Path) -> dict:
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except ValueError:
        log.warning("ignoring unreadable metrics file %s", side)
        return {}
    return data.get("metrics", data) if isinstance(data, dict) else {}


# ----------------------------------------------------------------------------------------------- deltas


DELTA_FIELDS = ("params_total", "params_encoder", "params_regressor", "macs", "latency_ms", "latency_b32_ms",
                "gpu_latency_ms", "onnx_latency_ms", "onnx_latency_b32_ms", "onnx_cuda_latency_ms", "peak_mem_mb",
                "metrics")


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
    if not (is_number(value) and is_number(base)):
        return None
    diff = value - base
    pct = diff / base * 100.0 if base else None
    better = None if diff == 0 else (diff > 0) == (key in HIGHER_IS_BETTER)
    return {"abs": diff, "pct": pct, "better": better}


def compute_ratios(row: dict, base: dict) -> dict[str, float]:
    """Baseline / row for the cost columns: how many times smaller or faster (MACs ÷ is the speed-up MACs predict)."""
    out = {}
    for name, (path, _, _) in RATIOS.items():
        v, v0 = get_path(row, path), get_path(base, path)
        if is_number(v) and is_number(v0) and v > 0:
            out[name] = v0 / v
    return out


def _note_sample_mismatch(row: dict, base: dict) -> None:
    for ds, vals in row["metrics"].items():
        n, n0 = vals.get("n"), get_path(base, ("metrics", ds, "n"))
        if n is not None and n0 is not None and n != n0:
            for col in COLUMNS:
                if col.path[:2] == ("metrics", ds) and get_path(row, col.path) is not None:
                    row["notes"][col.key] = f"{DATASET_TITLES.get(ds, ds)}: {n} samples vs {n0} for the baseline"


def _note_resolution_mismatch(row: dict, base: dict) -> None:
    res, res0 = row.get("img_res"), base.get("img_res")
    if res and res0 and res != res0:
        for col in COST_COLUMNS:
            if col.key not in ("params",) and is_number(get_path(row, col.path)):
                row["notes"][col.key] = f"profiled at {res} px, the baseline at {res0} px"
