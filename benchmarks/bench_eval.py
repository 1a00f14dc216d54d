"""Evaluation throughput: the full suite (`evaluate()`) vs model-only inference, data loading with and without
the HDF5 cache, and the rasteriser on the body mesh.

    python benchmarks/bench_eval.py                      # generates a small synthetic root in a temp dir
    python benchmarks/bench_eval.py --data data/synthetic --model hmr_mobilenet_v2 --img-res 224 --subset 64

Prints one line per measurement (images/s, ms/image). Single-threaded by default (`--threads`), since the
machine is shared; pass --threads 0 to leave torch's default.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from compress.data.datasets import BaseDataset
from compress.data.synthetic import generate_root
from compress.eval.protocols import evaluate
from compress.eval.render import render_parts
from compress.geometry import batch_rodrigues
from compress.models import create_model
from compress.smpl import SMPL


def _timed(fn, *, repeat: int = 3) -> float:
    """Best wall time of `repeat` runs (after one warm-up), in seconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_model(model, *, img_res: int, batch_size: int, n_batches: int) -> float:
    """Model-only inference on random tensors -> images/s."""
    x = torch.randn(batch_size, 3, img_res, img_res)

    def run():
        with torch.no_grad():
            for _ in range(n_batches):
                model(x)

    return batch_size * n_batches / _timed(run, repeat=2)


def bench_loading(root: Path, key: str, *, img_res: int, batch_size: int, subset: int, cache: bool) -> float:
    """Iterate a dataset's DataLoader without a model -> images/s. With `cache`, crops come from the HDF5 cache
    (built under <root>/cache on first use, outside the timed runs)."""
    ds = BaseDataset(root, key, img_res=img_res, is_train=False, augment=False, subset=subset, cache=cache)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=0)

    def run():
        for _ in loader:
            pass

    return len(ds) / _timed(run, repeat=2)


def bench_raster(root: Path, *, sizes=(64, 128, 256), batch_size: int = 16) -> dict[int, float]:
    """Rasterise the neutral body mesh (random global rotations, SPIN's camera) -> ms per image at each size."""
    smpl = SMPL(root, gender="neutral")
    g = torch.Generator().manual_seed(0)
    rot = torch.eye(3).repeat(batch_size, 24, 1, 1)
    rot[:, 0] = batch_rodrigues(torch.randn(batch_size, 3, generator=g) * 0.3) @ torch.diag(torch.tensor([1.0, -1, -1]))
    with torch.no_grad():
        verts = smpl(rot, torch.zeros(batch_size, 10)).vertices
    cam = torch.tensor([[0.9, 0.0, 0.0]]).repeat(batch_size, 1)
    labels = torch.zeros(smpl.faces.shape[0], dtype=torch.long)
    out = {}
    for res in sizes:
        sec = _timed(lambda: render_parts(verts, smpl.faces, labels, cam, img_res=res))
        out[res] = 1000.0 * sec / batch_size
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="data root (default: generate a small synthetic one)")
    p.add_argument("--model", default="hmr_tiny")
    p.add_argument("--img-res", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--subset", type=int, default=32, help="samples per dataset")
    p.add_argument("--datasets", default="3dpw,mpi-inf-3dhp,h36m-p1,h36m-p2,lsp")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else None
        if root is None:
            root = generate_root(Path(tmp) / "synthetic", size="small")
        model = create_model(args.model, img_res=args.img_res).eval()
        keys = args.datasets.split(",")
        print(f"root {root}  model {args.model}  img_res {args.img_res}  batch {args.batch_size}  "
              f"threads {torch.get_num_threads()}")

        ips = bench_model(model, img_res=args.img_res, batch_size=args.batch_size, n_batches=4)
        print(f"{'model only (random tensors)':<44} {ips:9.1f} images/s")

        for key in keys:
            t = time.perf_counter()
            res = evaluate(model, root, datasets=[key], img_res=args.img_res, batch_size=args.batch_size,
                           subset=args.subset)
            dt = time.perf_counter() - t
            n = res.get(key, {}).get("n", 0)
            if n:
                print(f"{'evaluate() ' + key:<44} {n / dt:9.1f} images/s  ({n} samples, {dt:.2f} s, incl. setup)")

        for key in keys:
            for cache in (False, True):
                ips = bench_loading(root, key, img_res=args.img_res, batch_size=args.batch_size, subset=args.subset,
                                    cache=cache)
                label = f"data loading {key} ({'HDF5 cache' if cache else 'image files'})"
                print(f"{label:<44} {ips:9.1f} images/s")

        for res, ms in bench_raster(root).items():
            print(f"{f'rasterise body mesh {res} px (batch 16)':<44} {ms:9.2f} ms/image")


if __name__ == "__main__":
    main()
