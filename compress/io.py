"""Atomic writes and strict JSON: every file compress writes goes through here.

A write lands in a temp file in the target's folder and is renamed over the target (`os.replace`), so a reader
(or a run interrupted mid-write) never sees half a file. JSON is strict: NaN and infinities become null.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` via a temp file in the same folder + os.replace (never a half-written file)."""
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Strict JSON (NaN/inf -> null) written atomically."""
    return atomic_write_text(path, json_text(obj, indent=indent))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """`torch.save(obj)` to `path` atomically."""
    import torch  # here, not at the top: recipe.py and the CLI's --help use this module without loading torch

    return _atomic(path, lambda f: torch.save(obj, f))


def atomic_symlink(target: str, link: str | os.PathLike) -> Path:
    """Point `link` at `target` (a relative name), replacing an existing link atomically."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return link


def finite_json(obj: Any) -> Any:
    """`obj` with every NaN/inf float replaced by None, so `json.dumps(..., allow_nan=False)` writes strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def json_text(obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
              default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text of `obj` (NaN/inf -> null); `default` converts what JSON has no type for (e.g. str)."""
    return json.dumps(finite_json(obj), indent=indent, sort_keys=sort_keys, default=default, allow_nan=False)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: str | os.PathLike, write: Callable[[Any], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
