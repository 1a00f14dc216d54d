"""Training throughput: the full loop (data loading in workers, model, SMPL, SPIN losses, Adam) vs the model alone
(forward + backward + Adam on random tensors) at the same batch and img_res; the ratio is what the loop keeps.

    python benchmarks/bench_train.py                       # generates a small synthetic root in a temp dir
    python benchmarks/bench_train.py --data data/synthetic --model hmr_mobilenet_v2 --img-res 224 --batch-size 32

Also prints data loading alone and SMPL + losses alone, to show where a gap comes from. Single-threaded torch by
default (`--threads`), since the machine is shared; the data workers are extra processes.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch


def make_recipe(args, root: Path):
    from compress.recipe import DataSpec, ModelSpec, Recipe, TrainSpec

    spec = TrainSpec(epochs=1, batch_size=args.batch_size, amp=False, log_every=10**9)
    data = DataSpec(root=str(root), workers=args.workers, cache=args.cache, augment=True)
    return Recipe(name="bench", model=ModelSpec(name=args.model, img_res=args.img_res), data=data, train=spec)


PREFETCH = 4  # batches the DataLoader queues per worker (compress.train.loader_factory)


def model_only_step(model, *, img_res: int, batch_size: int):
    """A closure doing forward + backward + Adam on random tensors (no data, no SMPL, no SPIN losses)."""
    opt = torch.optim.Adam(model.parameters(), lr=5e-5)
    x = torch.randn(batch_size, 3, img_res, img_res)
    model.train()

    def step():
        out = model(x)
        loss = out["rotmat"].square().mean() + out["betas"].square().mean() + out["cam"].square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def interleaved(ref_step, state, batches, *, batch_size: int, steps: int, rounds: int, warmup: int, drain: int):
    """Alternate rounds of the model-only step and the full loop (train_step over the real DataLoader), so both
    see the same background load; returns the best round of each in images/s. Each loop round first consumes the
    batches the workers queued during the model-only round, so queued data does not flatter the loop."""
    from compress.train import train_step

    for _ in range(warmup):
        ref_step()
        train_step(state, next(batches))
    ref, loop = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(steps):
            ref_step()
        ref.append(batch_size * steps / (time.perf_counter() - t))
        for _ in range(drain):
            train_step(state, next(batches))
        t = time.perf_counter()
        for _ in range(steps):
            train_step(state, next(batches))
        loop.append(batch_size * steps / (time.perf_counter() - t))
    return max(ref), max(loop)


def loading_only(make_loader, *, batch_size: int, steps: int) -> float:
    it = iter(make_loader(1))
    next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    return batch_size * steps / (time.perf_counter() - t)


def smpl_and_losses(state, batch: dict, *, steps: int) -> float:
    """SMPL (the joints-only body model the loop uses) forward/backward + losses on fixed predictions -> images/s."""
    from compress.losses import compute_losses, spin_losses

    b = batch["img"].shape[0]
    rotmat = torch.eye(3).expand(b, 24, 3, 3).clone().requires_grad_()
    out = {"rotmat": rotmat, "betas": torch.zeros(b, 10, requires_grad=True),
           "cam": torch.tensor([[0.9, 0.0, 0.0]]).expand(b, 3).clone().requires_grad_()}
    targets = {k: batch[k].float() for k in ("keypoints", "pose_3d", "has_pose_3d", "pose", "betas", "has_smpl")}
    t = time.perf_counter()
    for _ in range(steps):
        pred = state.smpl(out["rotmat"], out["betas"])
        terms = spin_losses(out, pred.vertices, pred.joints, targets, weights=state.weights, img_res=state.img_res)
        compute_losses(terms, state.weights)["total"].backward()
    return b * steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="data root (default: a small synthetic root in a temp dir)")
    p.add_argument("--model", default="hmr_mobilenet_v2")
    p.add_argument("--img-res", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds; the best of each is shown")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--cache", action="store_true", help="read crops from the HDF5 cache")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    from compress.models import create_model
    from compress.data.datasets import training_set
    from compress.distributed import DistInfo
    from compress.smpl import training_smpl
    from compress.train import loader_factory, make_state

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else Path(tmp) / "synthetic"
        if not args.data:
            from compress.data.synthetic import generate_root

            generate_root(root, size="small")
        recipe = make_recipe(args, root)
        torch.manual_seed(0)
        ref_step = model_only_step(create_model(args.model, img_res=args.img_res), img_res=args.img_res,
                                   batch_size=args.batch_size)
        torch.manual_seed(0)
        model = create_model(args.model, img_res=args.img_res)
        state = make_state(model, training_smpl(root, recipe.train), recipe.train, img_res=args.img_res,
                           device=torch.device("cpu"), info=DistInfo())
        dataset = training_set(recipe.data, img_res=args.img_res, augment=recipe.data.augment)
        per_round = args.steps + PREFETCH * args.workers
        needed = args.batch_size * (args.rounds * per_round + args.warmup + 2)
        if len(dataset) < needed:  # small roots have a handful of samples: cycle through them
            dataset = torch.utils.data.Subset(dataset, [i % len(dataset) for i in range(needed)])
        make_loader = loader_factory(dataset, batch_size=args.batch_size, workers=args.workers, seed=0,
                                     info=DistInfo())
        ref, loop = interleaved(ref_step, state, iter(make_loader(0)), batch_size=args.batch_size,
                                steps=args.steps, rounds=args.rounds, warmup=args.warmup,
                                drain=PREFETCH * args.workers)
        load = loading_only(make_loader, batch_size=args.batch_size, steps=args.steps)
        batch = next(iter(make_loader(2)))
        rest = smpl_and_losses(state, batch, steps=args.steps)

    print(f"model {args.model}  img_res {args.img_res}  batch {args.batch_size}  threads {torch.get_num_threads()}"
          f"  workers {args.workers}  cache {args.cache}")
    print(f"model only (fwd+bwd+Adam, random tensors): {ref:8.1f} images/s  (best of {args.rounds} rounds)")
    print(f"full training loop:                        {loop:8.1f} images/s  ({loop / ref:.0%} of model only)")
    print(f"data loading alone ({args.workers} worker(s)):            {load:8.1f} images/s")
    print(f"SMPL + losses alone (fwd+bwd):             {rest:8.1f} images/s")


if __name__ == "__main__":
    main()
