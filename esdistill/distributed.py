"""Data-parallel training under ``torchrun`` (or ``accelerate launch``): several GPUs, or CPU processes over gloo.

    torchrun --nproc-per-node 8 -m esdistill teacher fit -c my.toml   # the cross-encoder fits
    torchrun --nproc-per-node 8 -m esdistill train -c my.toml         # the student (after `esdistill teacher`)

The launcher sets ``RANK``/``WORLD_SIZE``; the Hugging Face trainer under sentence-transformers sees them and
wraps the model in DistributedDataParallel (NCCL on GPUs, gloo on CPUs), each process taking its share of every
batch. Every process builds the same training rows from the same cached inputs; only rank 0 writes: the model,
the stage's record, the log. So the results files are the same as a single process's, and a stage whose inputs
are not cached yet is refused (scoring the teacher in every process would do the work N times).
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process, or before the trainer set the process group up)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def trainer_kwargs() -> dict:
    """Training arguments for the launch this process is in: under torchrun on a machine without CUDA, the Hugging
    Face trainer runs data-parallel on CPUs (gloo) only when told to use the CPU — otherwise every process would
    train on all the data alone."""
    if world_size() <= 1:
        return {}
    import torch

    return {} if torch.cuda.is_available() else {"use_cpu": True}


def max_steps(batches_per_epoch: int, epochs: float) -> dict:
    """``{"max_steps": N}`` under torchrun: each process's share of the batches, for ``epochs``. Sharded, the
    no-duplicates batch samplers have no length the trainer can read (it then refuses to count epochs), so the
    steps are counted here — the same optimiser steps a single process takes, divided among the processes."""
    if world_size() <= 1:
        return {}
    import math

    return {"max_steps": max(1, math.ceil(math.ceil(batches_per_epoch / world_size()) * epochs))}
