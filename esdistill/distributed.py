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
