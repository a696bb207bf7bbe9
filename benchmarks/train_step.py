"""pedseg's default training step against what users run today, on the same batch, alternated in one process
(so machine noise hits all alike):

- pedseg: `train_steps` with the preset's defaults (`train.precision: auto`: bf16 autocast + channels-last where
  bf16 is native, fp32 elsewhere; see `pedseg_core.precision`);
- peer: the loop of Flower's and NVIDIA FLARE's MONAI examples: MONAI's FlexibleUNet of the same encoder and
  decoder widths, DiceCELoss, Adam, fp32;
- bare: the same network as pedseg's, DiceCELoss and Adam in a plain loop, in the precision pedseg chose.

Prints slices/s of each, pedseg's ratio to the peer loop (targets: >= 1.8x where bf16 is native, >= 1.3x on
CPUs without it) and to the bare loop (>= 0.9x), and pedseg's achieved GFLOP/s (the step's convolution and
matmul FLOPs, counted once) against a large matmul's GFLOP/s in the precision used, measured in the same run
(target >= 60%). Says which kind of CPU it ran on.

    python benchmarks/train_step.py [--preset small] [--size 128] [--batch 8] [--steps 6] [--repeats 4]
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import FlexibleUNet
from torch.utils.flop_counter import FlopCounterMode

from pedseg_core.config import build_config
from pedseg_core.data.sampling import Batch
from pedseg_core.model.unet import MultiDomainUNet
from pedseg_core.precision import Precision, resolve_precision
from pedseg_core.train.loop import StepPlan, train_steps
from pedseg_core.train.schedule import make_optimizer


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 10, trials: int = 5) -> float:
    """Best of `trials` timings of `repeats` n x n matmuls in `dtype`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * repeats / best / 1e9


def plain_loop(model: torch.nn.Module, batch: Batch, precision: Precision, steps: int, lr: float,
               forward: Callable) -> Callable[[], None]:
    """A step function: DiceCELoss + Adam on `model`, in `precision`, with no pedseg code in the loop."""
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    images, labels = batch.images, batch.labels[:, None]
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.to(memory_format=torch.channels_last)
    model.train()

    def run() -> None:
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.dtype == "bf16"):
                logits = forward(model, images)
            loss = loss_fn(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return run


def step_flops(model: torch.nn.Module, batch: Batch) -> float:
    """FLOPs of one fp32 forward + backward of `model` on `batch` (torch's FLOP counter)."""
    with FlopCounterMode(display=False) as counter:
        DiceCELoss(to_onehot_y=True, softmax=True)(model(batch.images, 0), batch.labels[:, None]).backward()
    model.zero_grad(set_to_none=True)
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
    chosen = resolve_precision(cfg.train.precision, cfg.train.channels_last, torch.device("cpu"))
    torch.manual_seed(0)
    classes = 4
    batch = Batch(torch.rand(args.batch, 1, args.size, args.size),
                  torch.randint(0, classes, (args.batch, args.size, args.size)),
                  torch.zeros(args.batch, dtype=torch.long))
    pedseg = MultiDomainUNet([classes], cfg.model)
    bare = MultiDomainUNet([classes], cfg.model)
    bare.load_state_dict(pedseg.state_dict())
    peer = FlexibleUNet(in_channels=1, out_channels=classes, backbone=cfg.model.backbone, spatial_dims=2,
                        decoder_channels=tuple(cfg.model.decoder_channels))
    flops = step_flops(bare, batch)
    optimizer = make_optimizer(pedseg, cfg.train.learning_rate, cfg.train.weight_decay)
    batches = itertools.repeat(batch)
    done = [0]

    def pedseg_steps() -> None:
        train_steps(pedseg, batches, optimizer, cfg.train, StepPlan(args.steps, done[0], 10**6))
        done[0] += args.steps

    loops = {"pedseg": pedseg_steps,
             "peer": plain_loop(peer, batch, Precision("fp32", False, "peer"), args.steps, cfg.train.learning_rate,
                                lambda m, x: m(x)),
             "bare": plain_loop(bare, batch, chosen, args.steps, cfg.train.learning_rate, lambda m, x: m(x, 0))}
    for run in loops.values():  # warm-up: first-call allocations and oneDNN kernel selection
        run()
    times = dict.fromkeys(loops, 0.0)
    for _ in range(args.repeats):
        for name, run in loops.items():
            start = time.perf_counter()
            run()
            times[name] += time.perf_counter() - start
    slices = args.batch * args.steps * args.repeats
    rate = {k: slices / v for k, v in times.items()}
    dtype = torch.bfloat16 if chosen.dtype == "bf16" else torch.float32
    limit = matmul_gflops(dtype)
    achieved = flops * rate["pedseg"] / args.batch / 1e9
    native = chosen.dtype == "bf16"
    print(f"{cfg.model.backbone} U-Net ({sum(p.numel() for p in pedseg.parameters()) / 1e6:.1f} M parameters), "
          f"batch {args.batch} x {args.size}x{args.size}, {torch.get_num_threads()} threads; pedseg's default: "
          f"{chosen.describe()}")
    print("| loop | slices/s | pedseg's ratio to it | target |")
    print("|---|---|---|---|")
    print(f"| pedseg (default) | {rate['pedseg']:.1f} | - | - |")
    print(f"| peer MONAI loop (FlexibleUNet, DiceCELoss, Adam, fp32) | {rate['peer']:.1f} | "
          f"{rate['pedseg'] / rate['peer']:.2f}x | >= {1.8 if native else 1.3}x |")
    print(f"| bare loop, same network and precision | {rate['bare']:.1f} | {rate['pedseg'] / rate['bare']:.2f}x "
          f"| >= 0.9x |")
    print(f"\npedseg achieves {achieved:.0f} GFLOP/s ({flops / args.batch / 1e9:.2f} GFLOP per slice), "
          f"{100 * achieved / limit:.0f}% of a 2048^2 {chosen.dtype} matmul ({limit:.0f} GFLOP/s; target >= 60%)")


if __name__ == "__main__":
    main()
