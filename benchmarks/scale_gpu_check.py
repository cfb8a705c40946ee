"""Scripted scale-out check for a GPU machine: every GPU of the Ray cluster as one actor.

Runs ``benchmarks/scale.py --gpu``: a full-size pixel UNet (the google/ddpm-celebahq-256
architecture, random weights, nothing downloaded) scores 256x256 images with the chosen attack on
the local engine (cuda:0), on Ray with 1 GPU actor and on Ray with one actor per GPU, side by side,
and prints images/s, the ratios (goal: N GPUs >= 0.85 N x one GPU; Ray with 1 worker within 15% of
the local engine), Ray's overhead per shard, and whether the scores of 1 and N workers are identical.

    python benchmarks/scale_gpu_check.py                          # this machine's GPUs
    python benchmarks/scale_gpu_check.py --ray-address auto       # a cluster started with `ray start`
    python benchmarks/scale_gpu_check.py --images 4096 --attack secmi --batch-size 64
    python benchmarks/scale_gpu_check.py --quick                  # CI smoke run: small UNet, CPU when no GPU
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: no spin-waiting threads

import scale  # noqa: E402  (benchmarks/scale.py, beside this file)

DEFAULTS = {"--images": "2048", "--batch-size": "32", "--attack": "loss"}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    for flag, value in DEFAULTS.items():  # --quick's own sizes win over these
        if flag not in argv:
            argv += [flag, value]
    scale.main(["--gpu", *argv])


if __name__ == "__main__":
    main()
