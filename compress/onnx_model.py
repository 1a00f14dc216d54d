"""An exported HMR model (`compress export`, `compress quantize`) run in ONNX Runtime behind the module interface
that compress.eval.protocols.evaluate uses: `model(img) -> {"rotmat", "betas", "cam"}`.

The file must be an ONNX graph with one image input (B, 3, R, R), R fixed, and the outputs `rotmat`, `betas` and
`cam`; anything else is a one-line UserError. Inference runs on the CPU provider (CUDA's when asked and present).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from compress.errors import UserError
from compress.export import OUTPUT_NAMES, session

ONNX_SUFFIX = ".onnx"


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def read_onnx(path: str | Path):
    """The parsed ONNX model, or a UserError naming the file when it is missing or not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path} (write one with `compress export CKPT --onnx FILE` or "
                        "`compress quantize RUN`)")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not an ONNX file ({type(exc).__name__})") from None


def image_resolution(model, path: str | Path) -> int:
    """R of the single (B, 3, R, R) input, or a UserError saying why this is no HMR image model."""
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    outputs = {o.name for o in model.graph.output}
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim] if len(inputs) == 1 else []
    ok = len(dims) == 4 and dims[1] == 3 and dims[2] and dims[2] == dims[3] and set(OUTPUT_NAMES) <= outputs
    if not ok:
        shape = "x".join(str(d or "?") for d in dims) or f"{len(inputs)} inputs"
        raise UserError(f"{path}: not an HMR image model (input {shape}, outputs {', '.join(sorted(outputs))}); "
                        f"expected one (B, 3, R, R) image input and outputs {', '.join(OUTPUT_NAMES)}")
    return int(dims[2])


class OnnxHMR(nn.Module):
    """An ONNX Runtime session with the zoo models' call signature; outputs land on the input's device."""

    def __init__(self, path: str | Path, *, threads: int | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        self.path = Path(path)
        self.img_res = image_resolution(read_onnx(self.path), self.path)
        self.session = session(self.path, threads=threads, device=torch.device(device))
        self.config = {"name": f"onnx:{self.path.name}", "overrides": {}}

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        outs = self.session.run(list(OUTPUT_NAMES), {self.session.get_inputs()[0].name:
                                                     img.detach().float().cpu().numpy()})
        return {k: torch.from_numpy(v).to(img.device) for k, v in zip(OUTPUT_NAMES, outs)}
