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


# x86 instruction sets ONNX Runtime's INT8 kernels use, weakest first: without VNNI (AVX2 alone) an int8 dot product
# takes three instructions instead of one, so INT8 gains less over fp32 there.
INT8_ISA = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "amx_int8")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """{"model", "int8_isa", "vnni"} of this CPU from /proc/cpuinfo (`cpuinfo`: its text, for tests); on other
    systems the model is platform.processor() and the instruction sets are unknown (empty)."""
    import platform

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    fields = dict(_cpuinfo_fields(cpuinfo))
    flags = set(fields.get("flags", "").split())
    isa = [name for name in INT8_ISA if name in flags]
    return {"model": fields.get("model name") or platform.processor() or "unknown", "int8_isa": isa,
            "vnni": any("vnni" in name or name.startswith("amx") for name in isa)}


def _cpuinfo_fields(text: str):
    """(key, value) of the first processor block of /proc/cpuinfo."""
    for line in text.splitlines():
        if not line.strip():
            break
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip(), value.strip()


def describe_cpu(info: dict) -> str:
    """One line: model and the INT8 instructions, e.g. 'AMD EPYC; INT8 on avx2 (no VNNI)'."""
    isa = info["int8_isa"]
    if not isa:
        return f"{info['model']}; INT8 instructions unknown"
    return f"{info['model']}; INT8 on {isa[-1]}" + ("" if info["vnni"] else " (no VNNI)")
