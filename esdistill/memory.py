"""Keeping a training step within this machine's memory.

A distillation step encodes ``batch_size`` lists of ``list_size`` documents and their queries at once, forward and
backward; its activations grow with batch × list × tokens, and ``train.list_size = "all"`` (16 lists of a query and
32 documents at 128 tokens) had the kernel kill the process at 23 GB resident, with no word from esdistill.

* :func:`bytes_per_text` — the memory one text's forward and backward pass holds, estimated from the transformer's
  shape (layers, width, heads) and the sequence length.
* :func:`available_bytes` — what this machine can give a step now (a GPU's free memory, else the system's and
  what this process holds already).
* :func:`plan_step` — before training: whether a step fits (``train.memory_gb``, default
  :data:`MEMORY_SHARE` of what is available), and if it does not, the mini-batch the distillation loss encodes at
  a time (``train.mini_batch``); a clear error naming the settings when nothing fits.
* :func:`cached_distill_loss` — the distillation loss (KL or MarginMSE) computed with GradCache
  (sentence-transformers' ``CachedLossMixin``): every text is embedded without gradients in mini-batches, the loss
  is computed on all the embeddings, and each mini-batch is embedded again with gradients to pass its share back.
  The gradients are those of the whole step (dropout is replayed), at the cost of one more forward pass; only one
  mini-batch's activations are alive at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

#: a step may use at most this share of the memory available when training starts (the rest: the weights, their
#: gradients and the optimiser's state, the texts and datasets, the allocator's slack)
MEMORY_SHARE = 0.7
#: bytes a text holds per layer and token: ``A * hidden + B * heads * tokens`` (float32). Fitted to the peak
#: resident memory of forward + backward of all-MiniLM-L6-v2 on 2 CPU cores (6 layers, 384 wide, 12 heads), divided
#: by the texts of the step, in the worst of the modes the same step shows from run to run (measured 2026-12-06,
#: 16 to 256 texts a step; at 128 tokens 64 texts hold 29, 37 or 51 MB a text): 21 MB a text at 64 tokens, 51 MB at
#: 128, 123 MB at 256, 314 MB at 512 (estimated 24, 52, 123, 320 MB)
A, B = 144, 8
#: a mini-batch's cached step encodes every text twice forward and once backward: the distillation rows cost this
#: much more time per text (the forward pass is about a third of forward + backward)
CACHED_COST = 4 / 3


def _shape(model) -> tuple[int, int, int]:
    """(layers, hidden size, attention heads) of ``model``'s transformer; a BERT-base shape when it says none."""
    try:
        config = model[0].auto_model.config
    except (AttributeError, IndexError, KeyError, TypeError):
        return 12, 768, 12
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 12
    hidden = getattr(config, "hidden_size", None) or getattr(config, "d_model", None) or 768
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 12
    return int(layers), int(hidden), int(heads)


def bytes_per_text(model, max_length: int, half_precision: bool = False) -> int:
    """The memory one text of ``max_length`` tokens holds through ``model``'s forward and backward pass:
    ``layers * tokens * (A * hidden + B * heads * tokens)`` bytes (:data:`A`, :data:`B`), halved in bf16."""
    layers, hidden, heads = _shape(model)
    out = layers * max_length * (A * hidden + B * heads * max_length)
    return out // 2 if half_precision else out


def available_bytes(processes: int = 1) -> int:
    """The memory a training step can have now. On a GPU (each process has its own): its free memory, after
    PyTorch's cache of freed blocks is emptied. On CPUs: the system's available memory (psutil), shared by the
    ``processes`` training side by side (torchrun), plus what this process holds already — memory an earlier
    training in the same process freed stays with the process (the allocator keeps it for reuse) and is not
    "available" to the system, yet the next step reuses it: without it a second training in one process (the
    bench's seeds, a notebook) saw 10 GB of 24 and was mini-batched for nothing. What the process truly keeps
    (weights, texts, datasets) is left to the share a step is not given (:data:`MEMORY_SHARE`)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available) // max(1, processes) + int(psutil.Process().memory_info().rss)


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


@dataclass
class StepPlan:
    """What :func:`plan_step` decided: ``mini_batch`` (rows of a column encoded at a time by the distillation
    loss; None: the whole step at once) and ``record`` (kept in the train record as ``memory``)."""

    mini_batch: int | None
    record: dict[str, Any] = field(default_factory=dict)


def plan_step(cfg, model, width: int, judged: bool, half_precision: bool = False,
              available: int | None = None, processes: int = 1) -> StepPlan:
    """Check that one training step fits in memory, before any trains, and choose the distillation loss's
    mini-batch.

    A distillation step encodes ``cfg.batch_size * width`` texts (``width``: a list's query and documents; 0 when
    no list trains), an MNRL step (``judged``) ``cfg.batch_size * 3``; each text costs :func:`bytes_per_text`. The
    limit is ``cfg.memory_gb`` or :data:`MEMORY_SHARE` of ``available`` (default :func:`available_bytes` for
    ``processes`` training side by side).
    ``cfg.mini_batch``: ``auto`` — the whole step when it fits, else the most rows a mini-batch can hold;
    ``off`` — always the whole step (an error when it does not fit); a number — that many rows, whatever fits.
    Raises :class:`~esdistill.errors.ConfigError` naming what to lower when even one row's texts, or an MNRL step
    (which is never mini-batched), would not fit."""
    per_text = bytes_per_text(model, cfg.max_length, half_precision)
    if cfg.memory_gb is not None:
        limit, whence = int(cfg.memory_gb * 1e9), f"train.memory_gb = {cfg.memory_gb:g}"
    else:
        have = available if available is not None else available_bytes(processes)
        limit, whence = int(MEMORY_SHARE * have), f"{MEMORY_SHARE:.0%} of the {_gb(have)} available"
    bs = cfg.batch_size
    distill_step = bs * width * per_text
    mnrl_step = bs * 3 * per_text if judged else 0
    record = {"bytes_per_text": per_text, "limit_bytes": limit, "distill_step_bytes": distill_step,
              "mnrl_step_bytes": mnrl_step, "setting": cfg.mini_batch}
    what = (f"at {cfg.max_length} tokens a text holds ~{per_text / 1e6:.0f} MB through forward and backward; "
            f"a step may use {_gb(limit)} ({whence})")
    if mnrl_step > limit:
        fit = max(1, limit // (3 * per_text))
        raise ConfigError(
            f"train: an MNRL step on judged pairs ({bs} rows x 3 texts) needs ~{_gb(mnrl_step)}: {what}",
            hint=f"lower train.batch_size (at most {fit} fits) or train.max_length, or set train.memory_gb")
    if not width:
        return StepPlan(None, record | {"mini_batch": None})
    if cfg.mini_batch == "off" or (cfg.mini_batch == "auto" and distill_step <= limit):
        if distill_step > limit:
            raise ConfigError(
                f"train: a distillation step ({bs} lists x {width} texts) needs ~{_gb(distill_step)}: {what}",
                hint="set train.mini_batch = 'auto' (the same gradients, computed a mini-batch at a time), or lower "
                     "train.batch_size / train.list_size / train.max_length")
        return StepPlan(None, record | {"mini_batch": None})
    fits = limit // per_text  # a mini-batch's texts alive at a time: one column's rows
    if fits < 1:
        raise ConfigError(f"train: one text does not fit: {what}",
                          hint="lower train.max_length, or raise train.memory_gb")
    rows = int(cfg.mini_batch) if isinstance(cfg.mini_batch, int) else int(min(bs, fits))
    return StepPlan(rows, record | {"mini_batch": rows})


def step_log(plan: StepPlan, cfg, width: int) -> str:
    """One line for the log when the distillation loss is mini-batched (empty otherwise)."""
    if plan.mini_batch is None:
        return ""
    r = plan.record
    return (f"train: a step of {cfg.batch_size} lists x {width} texts would need ~{_gb(r['distill_step_bytes'])}, "
            f"more than the {_gb(r['limit_bytes'])} it may use: the distillation loss encodes {plan.mini_batch} rows "
            f"at a time (GradCache: the same gradients, one more forward pass; train.mini_batch = "
            f"{cfg.mini_batch!r})")


def cached_distill_loss(inner, mini_batch: int):
    """``inner`` (a sentence-transformers loss with ``compute_loss_from_embeddings``: DistillKLDivLoss,
    MarginMSELoss) computed with GradCache, ``mini_batch`` rows of each column at a time."""
    from torch import nn

    try:
        from sentence_transformers.base.losses.gradcache import CachedLossMixin
    except ImportError:  # sentence-transformers < 5.7 has GradCache only inside its own cached losses
        raise ConfigError(
            "train: a mini-batched distillation step needs sentence-transformers >= 5.7 (GradCache for any loss)",
            hint="upgrade sentence-transformers, or lower train.batch_size / train.list_size so that a step fits "
                 "(train.mini_batch = 'off')") from None

    class CachedDistillLoss(CachedLossMixin, nn.Module):
        def __init__(self):
            super().__init__()
            self.model = inner.model
            self.loss = inner
            self.mini_batch_size = mini_batch

        def calculate_loss(self, reps, labels=None, *, with_backward: bool = False):
            import torch

            value = self.loss.compute_loss_from_embeddings([torch.cat(r) for r in reps], labels)
            if with_backward:
                value.backward()
                value = value.detach()
            return value

        def forward(self, sentence_features, labels):
            return self.forward_cached(sentence_features, labels)

        def get_config_dict(self) -> dict[str, Any]:
            return {**self.loss.get_config_dict(), "mini_batch_size": self.mini_batch_size}

    return CachedDistillLoss()
