"""`compress demo`: the study's chain on the synthetic benchmark, sized for a CPU.

shipped reference model (checkpoints/mbv2_reference.pt; `from_scratch`: trained again, stage by stage, as its card
says) -> P1 (prune 20%) -> FT(20) with distillation, and without -> P2 (a further 20%, from P1's distilled FT) ->
FT(8) with and without distillation -> P1 by the other importance criteria (accuracy right after pruning) -> INT8 of
the final model (ONNX Runtime) -> report (ONNX Runtime columns, the INT8 row, KD vs none, deltas within the card's
noise band).
Fine-tuning uses the settings of the reference model's card. Every stage is skipped when its output already exists
(re-running resumes), unless `force`.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from compress.constants import EVAL_DATASETS
from compress.data.synthetic import generate_root
from compress.errors import UserError
from compress.eval.protocols import evaluate_into_run
from compress.prune.run import run_prune
from compress.quantize import SUMMARY_FILE, QuantSpec, run_quantize
from compress.recipe import load_recipe
from compress.report import run_report
from compress.runs import FINETUNED, PRUNED, TRAINED, metrics_file
from compress.shipped import REFERENCE, card_path, read_card, save_half, training_stages
from compress.train import run_finetune, run_train

log = logging.getLogger(__name__)

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@dataclass(frozen=True)
class DemoSize:
    synth: str  # synthetic root size
    data_root: str
    batch_size: int
    ft_epochs: tuple[int, int]  # FT after P1, FT after P2 (the study: 20 and 8)
    ft_steps: Optional[int]  # cap on optimizer steps per epoch (None: a full pass of the mixed set)
    eval_subset: Optional[int]
    calib: int  # INT8 calibration crops (the small root's training mix holds 6)
    criteria: tuple[str, ...]  # P1 by these importance criteria too (accuracy right after pruning)
    scratch: tuple[str, ...] = ()  # --from-scratch: overrides on top of the card's training command


QUICK = DemoSize(synth="small", data_root="data/synthetic-small", batch_size=4, ft_epochs=(2, 1), ft_steps=4,
                 eval_subset=None, calib=4, criteria=("l1",),
                 scratch=("train.epochs=2", "train.steps_per_epoch=6", "train.batch_size=4", "train.warmup_steps=0"))
DEFAULT = DemoSize(synth="default", data_root="data/synthetic", batch_size=32, ft_epochs=(20, 8), ft_steps=None,
                   eval_subset=None, calib=64, criteria=("l1", "taylor", "random"))


def reference_card() -> dict:
    card = read_card(REFERENCE)
    if card is None or not REFERENCE.is_file():
        raise UserError(f"the shipped reference model is missing ({REFERENCE} and its .json card): restore it with "
                        "`git checkout -- checkpoints/`")
    return card


def common_settings(size: DemoSize, root: Path, card: dict) -> list[str]:
    """The overrides every demo stage takes: the shipped card's settings, then the demo size's root and batch."""
    return [*card.get("settings", []), f"data.root={root}", f"eval.subset={size.eval_subset or 'null'}",
            f"finetune.batch_size={size.batch_size}", f"finetune.steps_per_epoch={size.ft_steps or 'null'}"]


def run_demo(
    *, quick: bool = False, force: bool = False, out: str | Path = "runs/demo", data: str | None = None,
    from_scratch: bool = False, progress: Callable[[str], Callable] | None = None,
) -> dict:
    """Run (or resume) the demo pipeline; returns the report rows and where the outputs are."""
    size = QUICK if quick else DEFAULT
    out = Path(out) / ("quick" if quick else "default")
    if force and out.exists():
        shutil.rmtree(out)
    root = Path(data or size.data_root)
    generate_root(root, size=size.synth, seed=0, force=force)
    card = reference_card()
    common = common_settings(size, root, card)
    bar = progress or (lambda label: None)

    base = (_scratch_baseline(out, card, size, root, bar, own_root=data is not None) if from_scratch
            else shipped_baseline(out, common))
    p1 = _prune_and_finetune("mbv2_p1", out, base, base, common, size.ft_epochs[0], bar)
    p1_plain = _without_teacher(p1, out / "mbv2_p1_nokd", size.ft_epochs[0], bar)
    p2 = _prune_and_finetune("mbv2_p2", out, p1, base, common, size.ft_epochs[1], bar)
    p2_plain = _without_teacher(p2, out / "mbv2_p2_nokd", size.ft_epochs[1], bar)
    others = [_prune_only(c, out, base, common) for c in size.criteria]
    if not (p2 / SUMMARY_FILE).exists():  # the final model in INT8, scored on the whole suite
        run_quantize(p2 / FINETUNED, spec=QuantSpec(calib=size.calib), datasets=list(EVAL_DATASETS),
                     subset=size.eval_subset)
    # interleave: all rows timed in alternation, so a busy machine slows every row alike
    rows, md = run_report([p2, p2_plain, p1, p1_plain, *others], baseline=base, fmt="md", plots=out / "plots",
                          runs_dir=out, interleave=True, onnx=True)
    return {"rows": rows, "markdown": md, "out": str(out), "data_root": str(root)}


def shipped_baseline(out: Path, common: list[str]) -> Path:
    """The shipped model (and its card) copied into the demo as its baseline run, scored on the demo's root (the
    copy drops the card's metrics: the report then reads the demo's own, metrics/trained.json)."""
    run = out / "mbv2_reference"
    base = run / TRAINED
    run.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(card_path(REFERENCE), card_path(base))  # every time: the card's noise band may be newer
    if not metrics_file(run, TRAINED).is_file():
        save_half(REFERENCE, base, metrics={})
        evaluate_into_run(base, load_recipe(RECIPES / "mbv2_p1.yaml", common, env=False))
    return base


def _scratch_baseline(out: Path, card: dict, size: DemoSize, root: Path, bar, *, own_root: bool = False) -> Path:
    """The baseline trained again as the card says: each of its stages in turn, a later one starting from the one
    before (`size.scratch` shortens each for --quick). A stage trained on another synthetic root than the demo's
    (say the large one) gets that root, generated when missing, unless the user chose the root (`own_root`)."""
    stages = training_stages(card)
    start = None
    for i, stage in enumerate(stages, 1):
        run = out / ("mbv2_baseline" if i == len(stages) else f"mbv2_baseline_stage{i}")
        if not (run / TRAINED).exists():
            where = root if own_root or size.scratch else _stage_root(stage["data"], size, root)
            overrides = [*stage["settings"], f"data.root={where}", *size.scratch]
            overrides += [f"model.checkpoint={start}"] if start else []
            recipe = load_recipe(RECIPES / "mbv2_baseline.yaml", overrides, env=False)
            label = "train baseline (from scratch)" + (f", stage {i} of {len(stages)}" if len(stages) > 1 else "")
            run_train(recipe, out_dir=run, resume=True, progress=bar(label))
        start = run / TRAINED
    return start


def _stage_root(data: dict, size: DemoSize, root: Path) -> Path:
    """The demo's root for a stage trained on a root of the demo's size, else the stage's own (generated)."""
    if data.get("size", size.synth) == size.synth:
        return root
    return generate_root(Path(data["path"]), size=data["size"], seed=int(data.get("seed", 0)))


def _prune_and_finetune(name: str, out: Path, start: Path, teacher: Path, common: list[str], epochs: int,
                        bar) -> Path:
    run = out / name
    if not (run / PRUNED).exists():
        overrides = common + [f"prune.from={start}", f"finetune.distill.teacher={teacher}"]
        recipe = load_recipe(RECIPES / f"{name}.yaml", overrides, env=False)
        pruned = run_prune(recipe, out_dir=run)
        evaluate_into_run(pruned.checkpoint, recipe)  # accuracy right after pruning, before fine-tuning
    if not (run / FINETUNED).exists():
        run_finetune(run, epochs=epochs, resume=True, progress=bar(f"finetune {name}"))
    return run


def _without_teacher(run: Path, out: Path, epochs: int, bar) -> Path:
    """The same pruned model fine-tuned for as long without the teacher: what distillation adds."""
    if not (out / FINETUNED).exists():
        run_finetune(run, epochs=epochs, overrides=["finetune.distill=null"], out_dir=out, resume=True,
                     progress=bar(f"finetune {run.name} without distillation"))
    return out


def _prune_only(criterion: str, out: Path, start: Path, common: list[str]) -> Path:
    """P1 by another importance criterion, scored right after pruning (what the criterion alone keeps)."""
    run = out / f"mbv2_p1_{criterion}"
    if not (run / PRUNED).exists():
        recipe = load_recipe(RECIPES / "mbv2_p1.yaml", common + [f"prune.from={start}", f"prune.importance={criterion}",
                                                              f"name=mbv2_p1_{criterion}"], env=False)
        evaluate_into_run(run_prune(recipe, out_dir=run).checkpoint, recipe)
    return run
