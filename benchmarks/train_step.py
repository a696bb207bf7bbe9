"""The project's training step against a bare PyTorch loop on the same model, batch and data.

Both run alternately in one process (so machine noise hits both alike); prints slices/s of each, their ratio
(target >= 0.9), and the achieved GFLOP/s against a large fp32 matmul's GFLOP/s on the same cores.

    python benchmarks/train_step.py [--preset small] [--size 128] [--batch 8] [--steps 6] [--repeats 4]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from monai.losses import DiceCELoss
from torch.utils.flop_counter import FlopCounterMode

from pedseg_core.config import build_config
from pedseg_core.data.sampling import Batch
from pedseg_core.model.unet import MultiDomainUNet
from pedseg_core.train.loop import StepPlan, train_steps
from pedseg_core.train.schedule import make_optimizer


def matmul_gflops(n: int = 2048, repeats: int = 10, trials: int = 5) -> float:
    """Best of `trials` timings of `repeats` fp32 n x n matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best / 1e9


def bare_steps(model, batch: Batch, optimizer, steps: int) -> None:
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    model.train()
    for _ in range(steps):
        loss = loss_fn(model(batch.images, 0), batch.labels[:, None])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def step_flops(model, batch: Batch, optimizer) -> float:
    with FlopCounterMode(display=False) as counter:
        bare_steps(model, batch, optimizer, 1)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    cfg = build_config(args.preset, overrides={"data": {"image_size": args.size}})
    torch.manual_seed(0)
    classes = 4
    batch = Batch(torch.rand(args.batch, 1, args.size, args.size),
                  torch.randint(0, classes, (args.batch, args.size, args.size)),
                  torch.zeros(args.batch, dtype=torch.long))
    project = MultiDomainUNet([classes], cfg.model)
    bare = MultiDomainUNet([classes], cfg.model)
    bare.load_state_dict(project.state_dict())
    opt_project = make_optimizer(project, cfg.train.learning_rate, cfg.train.weight_decay)
    opt_bare = torch.optim.Adam(bare.parameters(), lr=cfg.train.learning_rate)

    flops = step_flops(bare, batch, opt_bare)
    batches = itertools.repeat(batch)
    train_steps(project, batches, opt_project, cfg.train, StepPlan(1, 0, 10**6))  # warm-up
    times = {"project": 0.0, "bare": 0.0}
    for r in range(args.repeats):
        start = time.perf_counter()
        train_steps(project, batches, opt_project, cfg.train, StepPlan(args.steps, r * args.steps, 10**6))
        times["project"] += time.perf_counter() - start
        start = time.perf_counter()
        bare_steps(bare, batch, opt_bare, args.steps)
        times["bare"] += time.perf_counter() - start

    slices = args.batch * args.steps * args.repeats
    rate = {k: slices / v for k, v in times.items()}
    limit = matmul_gflops()
    print(f"model {cfg.model.backbone} U-Net, {sum(p.numel() for p in project.parameters()) / 1e6:.1f} M "
          f"parameters, batch {args.batch} x {args.size}x{args.size}, {cfg.train.precision}, "
          f"{torch.get_num_threads()} threads")
    print(f"project step : {rate['project']:.2f} slices/s")
    print(f"bare loop    : {rate['bare']:.2f} slices/s")
    print(f"ratio        : {rate['project'] / rate['bare']:.3f}  (target >= 0.9)")
    achieved = flops * rate["project"] / args.batch / 1e9
    print(f"one step     : {flops / 1e9:.1f} GFLOP (direct-convolution count); project achieves {achieved:.0f} "
          f"GFLOP/s, {100 * achieved / limit:.0f}% of a 2048^2 fp32 matmul ({limit:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
