"""The device a command runs its model on: `--device auto|cpu|cuda[:N]` (auto: CUDA when available)."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from compress.errors import UserError

if TYPE_CHECKING:
    import torch

AUTO = "auto"
DEVICE_HELP = "auto (CUDA when available, else CPU), cpu or cuda[:N] (default: %(default)s)"


def resolve_device(text: str | torch.device | None = AUTO) -> torch.device:
    """auto/None -> cuda when available else cpu; cpu; cuda[:N] (a UserError when there is no such GPU)."""
    import torch  # here, so the command line parser stays light

    if isinstance(text, torch.device):
        text = str(text)
    text = (text or AUTO).strip().lower()
    if text == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not match:
        raise UserError(f"--device {text!r}: expected auto, cpu or cuda[:N]")
    if not torch.cuda.is_available():
        raise UserError(f"--device {text}: no CUDA on this machine; use --device cpu (or auto)")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise UserError(f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0..)")
    return torch.device("cuda", index)


def device_kind(device: str | torch.device) -> str:
    """'cpu' or 'cuda': what a cached measurement depends on (the GPU index does not change the figures' kind)."""
    return str(device).split(":")[0]
