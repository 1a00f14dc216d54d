"""Measured latency for pruning to a latency budget: a per-layer lookup table (LUT) and interleaved A/B timing.

The LUT maps a *layer signature* (a Conv2d or Linear with given in/out widths, kernel, stride, groups and input
size) to its median forward time in ms on this device at one batch size and thread count. Layers are timed on
their own, as freshly built modules on random inputs, a few times each in interleaved rounds (every signature
once per round, so a burst of load on the shared machine hits all of them alike), and the median is kept.
Timing single layers is cheap: a MobileNetV2 needs a few hundred signatures, not a forward pass per candidate.

The table is keyed by the signatures only, so it grows lazily as the pruning search asks for new widths and is
reused from a JSON file across runs (same model family, img_res, batch, device, thread count and host).
This module sits below prune.py and imports only torch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from compress.io import atomic_write_text, json_text

log = logging.getLogger(__name__)

LUT_VERSION = 3
ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish, "silu": nn.SiLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class LayerSig:
    """One layer's shape: enough to rebuild it and its input for timing."""

    kind: str  # "conv" or "linear"
    cin: int
    cout: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    height: int = 1
    width: int = 1
    bias: bool = True
    post: str = ""  # what follows the conv in the model and is timed with it: "bn", "bn+relu6", ...

    @property
    def key(self) -> str:
        if self.kind == "linear":
            return f"linear:{self.cin}x{self.cout}:b{int(self.bias)}"
        k, s, p, d = (f"{a}x{b}" for a, b in (self.kernel, self.stride, self.padding, self.dilation))
        return (f"conv:{self.cin}>{self.cout}:k{k}:s{s}:p{p}:d{d}:g{self.groups}:{self.height}x{self.width}"
                f":b{int(self.bias)}" + (f":{self.post}" if self.post else ""))

    def build(self, batch: int, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
        if self.kind == "linear":
            return nn.Linear(self.cin, self.cout, bias=self.bias).to(device), torch.randn(batch, self.cin,
                                                                                          device=device)
        layer = nn.Conv2d(self.cin, self.cout, self.kernel, self.stride, self.padding, self.dilation, self.groups,
                          bias=self.bias)
        parts = [layer]
        for name in filter(None, self.post.split("+")):
            parts.append(nn.BatchNorm2d(self.cout) if name == "bn" else ACTIVATIONS[name]())
        block = (nn.Sequential(*parts) if len(parts) > 1 else layer).to(device).eval()
        return block, torch.randn(batch, self.cin, self.height, self.width, device=device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_layers(sigs: list[LayerSig], *, batch: int, device: torch.device, repeats: int = 7,
                warmup: int = 2) -> dict[str, float]:
    """Median forward time (ms) of each signature, timed in interleaved rounds.

    As inside a model, the layer's input is warm (read just before, as if the previous layer had written it) and
    its weights are cold (every other signature ran since its last call)."""
    built = {s.key: s.build(batch, device) for s in sigs}
    for layer, x in built.values():
        for _ in range(warmup):
            layer(x)
    samples: dict[str, list[float]] = {k: [] for k in built}
    for _ in range(repeats):
        for key, (layer, x) in built.items():
            x.sum()  # warm the input
            _sync(device)
            start = time.perf_counter()
            layer(x)
            _sync(device)
            samples[key].append((time.perf_counter() - start) * 1000.0)
    return {k: statistics.median(v) for k, v in samples.items()}


def host_id() -> str:
    """A short id of this machine and software: LUT files from another host or torch version are not reused."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{platform.node()}|{cpu}|{torch.__version__}|{os.cpu_count()}"
    return hashlib.sha1(text.encode()).hexdigest()[:8]


class LatencyLUT:
    """Signature -> median ms for one (model family, img_res, batch, device, threads, host); lazily extended.

    `path` (optional) is read at construction when it exists and rewritten whenever new signatures were timed.
    """

    def __init__(self, *, meta: dict, path: str | Path | None = None, repeats: int = 7) -> None:
        self.meta = dict(meta)
        self.path = Path(path) if path else None
        self.repeats = repeats
        self.table: dict[str, float] = {}
        self.loaded = 0
        self.measured = 0
        if self.path and self.path.is_file():
            data = json.loads(self.path.read_text())
            same = {k: data.get("meta", {}).get(k) for k in self.meta} == self.meta
            if data.get("version") == LUT_VERSION and same:
                self.table = {k: float(v) for k, v in data.get("entries", {}).items()}
                self.loaded = len(self.table)
                log.info("latency LUT: %d entries read from %s", self.loaded, self.path)
            else:
                log.warning("latency LUT %s was built for another setting; rebuilding it", self.path)

    @property
    def device(self) -> torch.device:
        return torch.device(self.meta.get("device", "cpu"))

    def lookup(self, sigs: Iterable[LayerSig]) -> dict[str, float]:
        """ms for every signature; the missing ones are timed together (interleaved) and stored."""
        sigs = list({s.key: s for s in sigs}.values())
        missing = [s for s in sigs if s.key not in self.table]
        if missing:
            with _threads(self.meta.get("threads")):
                self.table.update(time_layers(missing, batch=int(self.meta.get("batch", 1)), device=self.device,
                                              repeats=self.repeats))
            self.measured += len(missing)
            self.save()
        return {s.key: self.table[s.key] for s in sigs}

    def save(self, path: str | Path | None = None) -> Path | None:
        path = Path(path) if path else self.path
        if path is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(path, json_text({"version": LUT_VERSION, "meta": self.meta, "entries": self.table},
                                                 indent=1, sort_keys=True))


def lut_filename(meta: dict) -> str:
    """runs/.latency_lut/<family>_r<img_res>_b<batch>_<device>_<threads>t_<host>.json"""
    device = str(meta["device"]).replace(":", "")
    return f"{meta['model']}_r{meta['img_res']}_b{meta['batch']}_{device}_{meta['threads']}t_{meta['host']}.json"


class _threads:
    """Temporarily set torch's intra-op thread count (None: leave it)."""

    def __init__(self, n: int | None) -> None:
        self.n = n
        self.previous = torch.get_num_threads()

    def __enter__(self):
        if self.n:
            torch.set_num_threads(int(self.n))

    def __exit__(self, *exc):
        if self.n:
            torch.set_num_threads(self.previous)


@torch.no_grad()
def ab_latency(models: dict[str, nn.Module], *, img_res: int, batch: int = 1, device: str | torch.device = "cpu",
               threads: int | None = None, warmup: int = 3, repeats: int = 21) -> dict[str, dict]:
    """Whole-model latency timed in alternation (A B A B ...): median, p10, p90 in ms per model, and the raw
    `samples_ms` (sample i of every model comes from the same round, so per-round ratios can be paired). Inference
    only: no autograd graph is built (as deployed); CUDA is synchronised around each call."""
    device = torch.device(device)
    x = torch.randn(batch, 3, img_res, img_res, device=device)
    with _threads(threads), torch.no_grad():
        for m in models.values():
            m.eval().to(device)
            for _ in range(warmup):
                m(x)
        samples: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(repeats):
            for key, m in models.items():
                _sync(device)
                start = time.perf_counter()
                m(x)
                _sync(device)
                samples[key].append((time.perf_counter() - start) * 1000.0)
    out = {}
    for key, v in samples.items():
        q = statistics.quantiles(v, n=10) if len(v) >= 2 else [v[0]] * 9
        out[key] = {"median_ms": statistics.median(v), "p10_ms": q[0], "p90_ms": q[-1], "repeats": len(v),
                    "samples_ms": v}
    return out


def paired_ratio(a: list[float], b: list[float]) -> dict:
    """Median and p10/p90 of a_i / b_i over rounds of an interleaved timing (robust to slow drifts in load)."""
    ratios = [x / y for x, y in zip(a, b)]
    q = statistics.quantiles(ratios, n=10) if len(ratios) >= 2 else [ratios[0]] * 9
    return {"median": statistics.median(ratios), "p10": q[0], "p90": q[-1]}
