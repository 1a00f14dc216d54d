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
- run.py       `run_prune`: the `compress prune` command (start model, Taylor calibration, run directory);
               import it from compress.prune.run
"""
from compress.prune.api import prune_model
from compress.prune.budget import BudgetOutcome, prune_to_budget
from compress.prune.core import PruneResult, prune_channels
from compress.prune.cost import MACS_COUNTER, Cost, cost, count_macs
from compress.prune.groups import BudgetGroup, budget_groups
from compress.prune.latency import LatencyOutcome, latency_candidates, prune_to_latency, select_for_latency
from compress.prune.tp_glue import IMPORTANCES, time_limit

# run.py (`compress prune`: data, SMPL, losses, run directories) is imported from compress.prune.run, so that the
# library above stays light for its other users (profile, sensitivity)
__all__ = [
    "IMPORTANCES", "MACS_COUNTER", "BudgetGroup", "BudgetOutcome", "Cost", "LatencyOutcome", "PruneResult",
    "budget_groups", "cost", "count_macs", "latency_candidates", "prune_channels", "prune_model", "prune_to_budget",
    "prune_to_latency", "select_for_latency", "time_limit",
]
