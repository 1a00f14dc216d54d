"""Model cost: parameters (encoder / regressor), MACs, per-stage widths; latency and memory (see below)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.checkpoint import load_checkpoint
from compress.devices import device_kind
from compress.io import atomic_write_json
from compress.latency import ab_latency
from compress.models import create_model, parameter_split
from compress.prune.cost import MACS_COUNTER, count_macs  # the one MAC counter and its caption
from compress.runs import resolve_checkpoint

log = logging.getLogger(__name__)


def load_any(target: str, *, foreign: dict | None = None, **overrides) -> tuple[nn.Module, dict]:
    """A zoo model name or a checkpoint path -> (model, meta). `foreign`: the model config a run recorded for a
    file that does not name its model (SPIN's checkpoint)."""
    if Path(target).suffix in (".pt", ".pth") or Path(target).is_dir() or Path(target).exists():
        return load_checkpoint(resolve_checkpoint(target), foreign=foreign, **overrides)
    return create_model(target, **overrides), {}


def stage_widths(model: nn.Module) -> dict[str, int]:
    """Output width of the last Conv2d/Linear in each stage (top-level child; encoder children one level down)."""
    widths: dict[str, int] = {}
    for name, child in _stages(model):
        last = None
        for m in child.modules():
            if isinstance(m, nn.Conv2d):
                last = m.out_channels
            elif isinstance(m, nn.Linear):
                last = m.out_features
        if last is not None:
            widths[name] = last
    return widths


def _stages(model: nn.Module):
    for name, child in model.named_children():
        if name == "encoder":
            inner = dict(child.named_children())
            body = inner.get("features", child)  # torchvision keeps the trunk in `features` for most models
            prefix = "encoder.features" if "features" in inner else "encoder"
            for sub, m in body.named_children():
                yield f"{prefix}.{sub}", m
            for sub, m in inner.items():
                if sub != "features" and body is not child:
                    yield f"encoder.{sub}", m
        else:
            yield name, child


def model_info(target: str, **overrides) -> dict:
    """Everything `compress info` prints, as the JSON contract of DESIGN.md."""
    model, meta = load_any(target, **overrides)
    split = parameter_split(model)
    img_res = int(getattr(model, "img_res", 224))
    return {
        "model": model.config["name"],
        "source": str(target),
        "img_res": img_res,
        "params_total": split["total"],
        "params_encoder": split["encoder"],
        "params_regressor": split["regressor"],
        "macs": count_macs(model, img_res),
        "macs_counter": MACS_COUNTER,
        "widths": stage_widths(model),
    }


# ----------------------------------------------------------------------------------------------- latency


def interleaved_latency(
    models: dict[str, nn.Module], *, img_res: int, batch_size: int = 1, device: str | torch.device = "cpu",
    warmup: int = 3, repeats: int = 15,
) -> dict[str, dict]:
    """Latency of several models timed in alternation (A B A B ...), so machine noise hits all alike.

    Each entry: median and 10/90th percentile in ms over `repeats` runs after `warmup` runs (the timer is
    compress.latency.ab_latency, which the latency-targeted pruning uses too).
    """
    stats = ab_latency(models, img_res=img_res, batch=batch_size, device=device, warmup=warmup, repeats=repeats)
    extra = {"batch": batch_size, "threads": torch.get_num_threads(), "device": str(device)}
    return {k: {n: v for n, v in s.items() if n != "samples_ms"} | extra for k, s in stats.items()}


def measure_latency(model: nn.Module, *, img_res: int, batch_size: int = 1, device="cpu", warmup=3, repeats=15):
    """Latency statistics of one model (see interleaved_latency)."""
    return interleaved_latency({"m": model}, img_res=img_res, batch_size=batch_size, device=device,
                               warmup=warmup, repeats=repeats)["m"]


# ----------------------------------------------------------------------------------------------- memory


def estimate_memory_mb(model: nn.Module, *, img_res: int, batch_size: int, train: bool) -> float:
    """Device-independent memory estimate in MiB.

    Inference: parameters + buffers + the largest activation pair alive at once (input + output of a layer).
    Training step: parameters, gradients, two Adam moments, and every tensor autograd saves for backward
    (counted with saved-tensor hooks, each storage once).
    """
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    device = next(model.parameters()).device
    x = torch.randn(batch_size, 3, img_res, img_res, device=device)
    if not train:
        return (param_bytes + buffer_bytes + _peak_activation_bytes(model, x)) / 2**20
    seen: set[int] = set()
    saved = 0

    def pack(t: torch.Tensor):
        nonlocal saved
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            saved += t.untyped_storage().nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    model.eval()
    return (4 * param_bytes + buffer_bytes + saved) / 2**20


def _peak_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    peak = x.numel() * x.element_size()

    def hook(_m, inputs, output):
        nonlocal peak
        size = sum(t.numel() * t.element_size() for t in (*inputs, output) if isinstance(t, torch.Tensor))
        peak = max(peak, size)

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return peak


def measured_peak_memory_mb(checkpoint: str, *, img_res: int, batch_size: int, train: bool, device="cpu",
                            foreign: dict | None = None) -> float:
    """Measured peak memory of one inference or training step, in MiB.

    CUDA: torch.cuda.max_memory_allocated around the step. CPU: a fresh subprocess reports the growth of its
    peak resident set size across the step (so earlier work in this process does not count). Both add the
    model's own weights (parameters and buffers), which were allocated before the step.
    """
    code = (
        "import json;from compress.profile import _step_peak;"
        f"print(json.dumps(_step_peak({str(checkpoint)!r},{img_res},{batch_size},{train},{str(device)!r},"
        f"json.loads({json.dumps(foreign)!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"memory probe failed for {checkpoint}: {out.stderr.strip().splitlines()[-1:]}")
    return float(out.stdout.strip().splitlines()[-1])


def _step_peak(checkpoint: str, img_res: int, batch_size: int, train: bool, device: str,
               foreign: dict | None = None) -> float:
    torch.set_num_threads(1)
    model, _ = load_any(checkpoint, foreign=foreign)
    model.to(device)
    x = torch.randn(batch_size, 3, img_res, img_res, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5) if train else None
    # The weights were loaded before the step's baseline was taken; count them in, so a smaller model's
    # inference peak shows its smaller weights too (the estimate counts them the same way).
    weights_mb = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 2**20
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _one_step(model, x, opt)
        return (torch.cuda.max_memory_allocated() - base) / 2**20 + weights_mb
    with _RssPeak() as peak:
        _one_step(model, x, opt)
    return peak.growth_mb + weights_mb


class _RssPeak:
    """Peak resident-set growth of this process across a block, in MiB (Linux).

    Loading the model already set the process's high-water mark above what one step adds, so the mark is reset
    first (`/proc/self/clear_refs` = 5) and read back from VmHWM; where that is not allowed, a thread samples
    VmRSS every millisecond instead.
    """

    def __enter__(self):
        self.base = _proc_status_kb("VmRSS")
        self.hwm_reset = _reset_hwm()
        self.samples = [self.base]
        self.stop = threading.Event()
        self.thread = None
        if not self.hwm_reset:
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop.wait(0.001):
            self.samples.append(_proc_status_kb("VmRSS"))

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join()
        peak = _proc_status_kb("VmHWM") if self.hwm_reset else max(self.samples)
        self.growth_mb = max(0, peak - self.base) / 1024


def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _one_step(model: nn.Module, x: torch.Tensor, opt) -> None:
    if opt is None:
        with torch.no_grad():
            model.eval()(x)
        return
    model.train()
    out = model(x)
    loss = sum(v.float().pow(2).mean() for k, v in out.items() if k != "features")
    loss.backward()
    opt.step()


# ----------------------------------------------------------------------------------------------- cached profile


PROFILE_CACHE = ".profile.json"  # <ckpt>.profile.<cpu|cuda>.json: {"key": ..., "profile": {...}}, one per device
ONNX_LATENCY_CACHE = ".onnx-latency.json"  # <ckpt>.onnx-latency.json: {"key": ..., "stats": {...}}
ONNX_CUDA_LATENCY_CACHE = ".onnx-cuda-latency.json"  # the CUDA execution provider's figure, beside it
_CACHE_FIELD = {PROFILE_CACHE: "profile", ONNX_LATENCY_CACHE: "stats", ONNX_CUDA_LATENCY_CACHE: "stats"}


def file_key(path: Path) -> dict:
    """The identity of a checkpoint file in a cache key: a rewritten file is measured again."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_file(path: str | Path, cache: str, device: str | None = None) -> Path:
    """The cache file beside a checkpoint. Profiles are kept per device kind (`<ckpt>.profile.cpu.json`,
    `<ckpt>.profile.cuda.json`), so a report that times on the CPU and on CUDA never overwrites one with the other."""
    path = Path(path)
    if cache == PROFILE_CACHE:
        return path.with_name(f"{path.name}.profile.{device_kind(device or 'cpu')}.json")
    return path.with_name(path.name + cache)


def read_cache(path: str | Path, cache: str, **settings) -> Any | None:
    """The figures cached beside a checkpoint (`cache`: PROFILE_CACHE or ONNX_LATENCY_CACHE), or None.

    The one key scheme: the file's identity (file_key) plus the measurement settings stored with it. A hit needs
    the same file and the same value for every setting given here; settings not given are not compared.
    """
    path = Path(path)
    file = cache_file(path, cache, settings.get("device"))
    if not file.is_file():
        return None
    try:
        stored = json.loads(file.read_text())
    except ValueError:
        log.warning("ignoring unreadable cache %s", file)
        return None
    key = stored.get("key") if isinstance(stored, dict) else None
    want = file_key(path) | settings
    if not isinstance(key, dict) or any(key.get(k) != v for k, v in want.items()):
        return None
    return stored.get(_CACHE_FIELD[cache])


def write_cache(path: str | Path, cache: str, figures: Any, **settings) -> None:
    """Store `figures` beside the checkpoint under its file_key and `settings` (atomically: a concurrent report
    never reads half a file)."""
    path = Path(path)
    atomic_write_json(cache_file(path, cache, settings.get("device")),
                      {"key": file_key(path) | settings, _CACHE_FIELD[cache]: figures}, indent=1)


def profile_checkpoint(
    path: str | Path, *, img_res: int | None = None, device: str = "cpu", retime: bool = False,
    batch_sizes: tuple[int, ...] = (1, 32), repeats: int = 15, foreign: dict | None = None,
) -> dict:
    """Params, MACs, latency and memory of a checkpoint, cached in `<ckpt>.profile.json`.

    The cache is reused while the checkpoint file, resolution, device, batch sizes and thread count are
    unchanged; `retime=True` measures again. `foreign`: see load_any.
    """
    path = Path(path)
    model, _ = load_any(str(path), foreign=foreign)
    img_res = int(img_res or getattr(model, "img_res", 224))
    settings = {"img_res": img_res, "device": device, "batch_sizes": list(batch_sizes),
                "threads": torch.get_num_threads()}
    cached = None if retime else read_cache(path, PROFILE_CACHE, **settings)
    if cached is not None:
        return cached
    profile = _profile_model(model, path, img_res=img_res, device=device, batch_sizes=batch_sizes, repeats=repeats,
                             foreign=foreign)
    write_cache(path, PROFILE_CACHE, profile, **settings)
    return profile


def _profile_model(model, path, *, img_res, device, batch_sizes, repeats, foreign=None) -> dict:
    split = parameter_split(model)
    latency = {f"b{b}": measure_latency(model, img_res=img_res, batch_size=b, device=device, repeats=repeats)
               for b in batch_sizes}
    b_train = min(8, max(batch_sizes))
    mem = {
        "infer_estimate": estimate_memory_mb(model, img_res=img_res, batch_size=1, train=False),
        "train_estimate": estimate_memory_mb(model, img_res=img_res, batch_size=b_train, train=True),
        "infer_measured": measured_peak_memory_mb(str(path), img_res=img_res, batch_size=1, train=False, device=device,
                                                  foreign=foreign),
        "train_measured": measured_peak_memory_mb(str(path), img_res=img_res, batch_size=b_train, train=True,
                                                  device=device, foreign=foreign),
        "train_batch": b_train,
        "method": ("weights + cuda max_memory_allocated of the step" if device.startswith("cuda")
                   else "weights + peak RSS growth of the step in a fresh process"),
    }
    first = f"b{batch_sizes[0]}"
    return {
        "params_total": split["total"], "params_encoder": split["encoder"], "params_regressor": split["regressor"],
        "macs": count_macs(model, img_res), "macs_counter": MACS_COUNTER, "img_res": img_res,
        "latency_ms": latency[first]["median_ms"],
        "latency": latency | {"threads": torch.get_num_threads(), "device": device},
        "peak_mem_mb": mem,
    }
