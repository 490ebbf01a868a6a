"""The sentence-transformers trainer's arguments every student training shares (the ranking losses in
:mod:`esdistill.train`, the copy in :mod:`esdistill.embedding_distill`)."""

from __future__ import annotations

from pathlib import Path

from . import distributed
from .config import TrainConfig
from .models import training_bf16, warmup


def training_args(cfg: TrainConfig, output_dir: Path, evaluate_epochs: bool = False, mnrl: bool = True,
                  batches_per_epoch: int = 0, eval_steps: int | None = None):
    """The trainer's arguments. With MNRL in the mix (``mnrl``) and ``cfg.no_duplicates``, batches never hold
    two rows that share a text: MNRL takes the other rows' documents as negatives, and a second row of the same
    query would hand it one of its own relevant documents as a negative."""
    import torch
    from sentence_transformers import SentenceTransformerTrainingArguments

    bf16 = training_bf16(cfg.precision)
    launch = distributed.trainer_kwargs()
    if bf16 and not torch.cuda.is_available():
        launch["use_cpu"] = True  # the trainer's bf16 on a CPU: autocast there (it refuses bf16 without a GPU else)
    return SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        **warmup(0.1),
        seed=cfg.seed,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        logging_steps=25,
        report_to="none",
        batch_sampler="no_duplicates" if cfg.no_duplicates and mnrl else "batch_sampler",
        eval_strategy="steps" if eval_steps else "epoch" if evaluate_epochs else "no",
        **({"eval_steps": eval_steps} if eval_steps else {}),
        bf16=bf16,  # mixed precision where the hardware computes bfloat16 (train.precision)
        disable_tqdm=True,  # progress is one rich bar (esdistill.console.attach_progress)
        **launch,  # torchrun on CPUs: data-parallel over gloo
        **distributed.max_steps(batches_per_epoch, cfg.epochs),
    )
