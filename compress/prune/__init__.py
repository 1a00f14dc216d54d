"""Structured channel pruning of HMR models with Torch-Pruning's DependencyGraph, plus the HMR knowledge it lacks.

Modules, each importing only those listed before it:
- cost.py      the one MAC / parameter counter (`cost`, `count_macs`, `MACS_COUNTER`) and layer widths
- tp_glue.py   Torch-Pruning adapters: importance by name (bn_scale fallback), ShuffleNet shuffles, graph fixes,
               the pruner build under a time limit, the channel tracker
- core.py      `prune_channels`: prune by ratio or to given widths, the one pruning primitive; `PruneResult`
- groups.py    the channel groups and the per-layer width model the searches work on
- budget.py    params / MACs targets: ratio bisection, then fill-up (calls core.prune_channels)
- latency.py   latency targets: LUT-based selection checked by A/B timing (calls core.prune_channels)
- api.py       `prune_model`: dispatches to core, budget or latency
- run.py       `run_prune`: the `compress prune` command (start model, Taylor calibration, run directory)
"""
from compress.prune.api import prune_model
from compress.prune.budget import BudgetOutcome, prune_to_budget
from compress.prune.core import PruneOptions, PruneResult, as_spec, prune_channels
from compress.prune.cost import MACS_COUNTER, MACS_NOTE, Cost, cost, count_macs, layer_widths
from compress.prune.groups import BudgetGroup, budget_groups
from compress.prune.latency import LatencyOutcome, latency_candidates, prune_to_latency, select_for_latency
from compress.prune.run import PruneRun, calibration_batches, hmr_loss_fn, run_prune
from compress.prune.tp_glue import BUILD_TIMEOUT_S, IMPORTANCES, time_limit

__all__ = [
    "BUILD_TIMEOUT_S", "IMPORTANCES", "MACS_COUNTER", "MACS_NOTE", "BudgetGroup", "BudgetOutcome", "Cost",
    "LatencyOutcome", "PruneOptions", "PruneResult", "PruneRun", "as_spec", "budget_groups", "calibration_batches",
    "cost", "count_macs", "hmr_loss_fn", "latency_candidates", "layer_widths", "prune_channels", "prune_model",
    "prune_to_budget", "prune_to_latency", "run_prune", "select_for_latency", "time_limit",
]
