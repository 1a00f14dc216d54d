"""The reference model shipped in checkpoints/: its card, its checksum, and the recipes that start from it.

`checkpoints/mbv2_reference.pt` is HMR-MobileNetV2 trained on the default synthetic root (fp16 weights; loading
restores fp32). Beside it, `mbv2_reference.json` is its machine-readable card: sha256, the command that made it,
its suite metrics, the settings a run that starts from it takes (`settings`, `--set`-style) and the spread of the
metrics over fine-tuning seeds (`noise`). `mbv2_reference.md` is the card for people.

A recipe whose `prune.from` does not exist starts from `prune.fallback` instead (the MobileNetV2 recipes name the
shipped model), taking the card's settings before the command line's `--set`: a fresh clone can run
`compress prune recipes/mbv2_p1.yaml` with no baseline of its own.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from compress.checkpoint import read_checkpoint_file
from compress.errors import UserError
from compress.io import atomic_torch_save, atomic_write_json
from compress.recipe import Recipe, load_recipe
from compress.runs import PRUNE_START, Lineage, resolve_checkpoint

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "checkpoints" / "mbv2_reference.pt"


def card_path(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".json")


def read_card(checkpoint: str | Path) -> dict | None:
    """The JSON card beside a checkpoint, or None when it has none."""
    path = card_path(checkpoint)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_half(src: str | Path, dst: str | Path, **meta) -> Path:
    """Our checkpoint `src` with its floating-point weights stored as fp16 (half the bytes; loading casts them back
    to the model's fp32) and without its run's parent path; `meta` replaces top-level fields (e.g. metrics)."""
    raw = read_checkpoint_file(src)
    if "format_version" not in raw:
        raise UserError(f"{src}: not one of our checkpoints (save_half keeps the model description)")
    state = {k: v.half() if v.is_floating_point() else v for k, v in raw["state_dict"].items()}
    return atomic_torch_save({**raw, "state_dict": state, "parent": None, **meta}, dst)


def write_card(checkpoint: str | Path, card: dict) -> dict:
    """Write the JSON card with the file's current sha256 and size; returns the card as written."""
    checkpoint = Path(checkpoint)
    card = {**card, "file": checkpoint.name, "sha256": sha256(checkpoint), "bytes": checkpoint.stat().st_size}
    atomic_write_json(card_path(checkpoint), card)
    return card


def training_stages(card: dict) -> list[dict]:
    """How the card's model was trained, oldest stage first: each stage's `--set` overrides of
    recipes/mbv2_baseline.yaml (`settings`; a later stage also starts from the one before), its data root (`data`:
    path, size, seed, train_images), steps, wall_s, machine and exact command. A card without `stages` was trained in
    one stage, described by its top-level train_settings, data_root, steps, wall_s, machine and command."""
    if card.get("stages"):
        return list(card["stages"])
    return [{"settings": card.get("train_settings", []), "data": card.get("data_root", {}),
             "steps": card.get("steps", 0), "wall_s": card.get("wall_s", 0), "machine": card.get("machine"),
             "command": card.get("command")}]


def card_summary(target: str | Path) -> dict[str, str]:
    """What a shipped checkpoint's card says (how it was made, its scores, whether the checksum holds), as the
    lines `compress info` prints; {} for a file without a card or a model name."""
    card = read_card(target) if Path(target).is_file() else None
    if not card:
        return {}
    sets = list(card.get("ratios", {}))
    pa = " / ".join(f"{card['metrics'][k]['pa_mpjpe_mm']:.1f}" for k in sets if k in card.get("metrics", {}))
    ok = sha256(target) == card.get("sha256")
    md = Path(target).with_suffix(".md")
    roots = {_root_line(stage["data"]): None for stage in training_stages(card)}  # in order, once each
    return {"trained": _trained_line(card), "data": ", then ".join(roots),
            "PA-MPJPE": f"{pa} mm ({', '.join(sets)})",
            "sha256": f"{str(card.get('sha256'))[:16]}… ({'matches the file' if ok else 'DOES NOT match the file'})",
            **({"card": str(md)} if md.is_file() else {})}


def _root_line(data: dict) -> str:
    return f"{data.get('path')} ({data.get('size')} synthetic root, seed {data.get('seed')})"


def _trained_line(card: dict) -> str:
    """How long it trained, and where; a model trained in stages names each."""
    stages = training_stages(card)
    total = sum(stage.get("steps", 0) for stage in stages)
    if len(stages) == 1:
        return f"{total:,} steps, {_time_and_place(stages[0])}"
    return f"{total:,} steps: " + ", then ".join(f"{st.get('steps', 0):,} in {_time_and_place(st)}" for st in stages)


def _time_and_place(stage: dict) -> str:
    return f"{stage.get('wall_s', 0) / 60:.0f} min on {stage.get('machine')}"


# ----------------------------------------------------------------------------------------------- fallback


@dataclass(frozen=True)
class Start:
    """What a pruning run took from a shipped model: its file, the missing prune.from it replaced (empty when the
    run descends from it through prune.from) and the card's settings."""

    checkpoint: str
    missing: str
    settings: tuple[str, ...]

    def note(self) -> str:
        told = f"{', '.join(self.settings)} from its card" if self.settings else "no settings from its card"
        if self.missing:
            return (f"start: {self.checkpoint}, the shipped reference model ({self.missing} not found); {told}; "
                    "--set values still win")
        return f"chain root {self.checkpoint} is a shipped model: {told}; --set values still win"


def locate(path: str) -> Path | None:
    """A fallback path as given (from the working directory), else inside this repository."""
    for candidate in (Path(path), REPO / path):
        if candidate.is_file():
            return candidate
    return None


def fallback_path(prune_from: str, fallback: str) -> Path | None:
    """The fallback file when `prune_from` is missing and a fallback is named; None when prune.from exists (or no
    fallback is named). A named fallback that is missing too is an error naming both."""
    if not prune_from or not fallback or Path(prune_from).exists():
        return None
    found = locate(fallback)
    if found is None:
        raise UserError(f"prune.from not found: {prune_from}, and its fallback {fallback} is missing too: train a "
                        "baseline first (compress train RECIPE) or set prune.from to a checkpoint")
    return found


def root_settings(ref: str | Path) -> tuple[Path, tuple[str, ...]] | None:
    """(root, settings) when the chain of checkpoint/run `ref` starts at a file with a card, else None."""
    if not ref or not Path(ref).exists():
        return None
    root = Lineage().chain(resolve_checkpoint(ref, order=PRUNE_START))[0].path
    card = read_card(root)
    return None if card is None else (root, tuple(card.get("settings", [])))


def load_prune_recipe(path: str | Path, overrides: list[str], *, root: str | None = None) -> tuple[Recipe, Start | None]:
    """The recipe of `compress prune`. When prune.from is missing, prune.fallback replaces it. When the start's
    chain begins at a shipped model (fallback or not), the settings of its card apply: the card's first, then the
    command line's overrides (which win)."""
    recipe = load_recipe(path, overrides=overrides, root=root)
    if recipe.prune is None:
        return recipe, None
    fallback = fallback_path(recipe.prune.from_, recipe.prune.fallback)
    found = root_settings(fallback or recipe.prune.from_ or recipe.model.checkpoint)
    if found is None and fallback is None:
        return recipe, None
    start = Start(checkpoint=str(fallback or found[0]), missing=recipe.prune.from_ if fallback else "",
                  settings=found[1] if found else ())
    log.debug("%s", start.note())
    moved = [f"prune.from={fallback}"] if fallback else []
    return load_recipe(path, overrides=[*start.settings, *moved, *overrides], root=root), start


def noise_band(checkpoint: str | Path | None) -> dict | None:
    """The card's spread of the metrics over fine-tuning seeds ({"stage", "seeds", "sd": {key: value}}), or None."""
    if checkpoint is None:
        return None
    card = read_card(checkpoint)
    return (card or {}).get("noise")

