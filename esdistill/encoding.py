"""A bi-encoder encoding documents, as every caller does it (the deploy, the ``embed`` stage, the engine's jobs):
:class:`ModelEmbedder` (vectors and which documents were truncated) under :func:`inference_context` (bf16
autocast on a GPU), and :func:`open_store` (a model's document vectors kept in a work dir). Below
:mod:`esdistill.embed`, :mod:`esdistill.deploy` and :mod:`esdistill.engine`, which all import it."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import numpy as np

from .data import Doc
from .models import bf16_available, embedding_info, model_fingerprint
from .vectors import DocumentVectors


def inference_context():
    """bf16 autocast on a CUDA GPU that supports it (inference only); nothing on a CPU."""
    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16_available() else contextlib.nullcontext()


def open_store(root: Path | None, name: str, max_length: int | None) -> DocumentVectors:
    """The document vectors kept of model ``name`` (a registered name, a hub id or a folder: its fingerprint names
    the store) at ``max_length`` tokens in the precision :func:`inference_context` encodes in here (bf16 on a CUDA
    GPU), below ``root`` (a work dir's ``vectors/``; None: in memory only). :mod:`esdistill.vectors`."""
    if root is None:
        return DocumentVectors()
    precision = "bf16" if bf16_available() else "fp32"
    fingerprint = re.sub(r"[^\w.@-]+", "_", model_fingerprint(name))  # a hub id's "/" is not a folder
    return DocumentVectors(Path(root) / f"{fingerprint}-{max_length}-{precision}")


class ModelEmbedder:
    """Embeds documents with the model, counting those longer than its token limit (truncated)."""

    def __init__(self, model, batch_size: int = 32):
        self.model, self.batch_size = model, batch_size
        self.dims, self.normalized = embedding_info(model)
        self.max_tokens = model.max_seq_length

    def embed(self, docs: list[tuple[Doc, str]]) -> tuple[np.ndarray, list[bool]]:
        """Vectors of ``(document, text hash)`` pairs, and which documents were truncated."""
        texts = [d.full_text for d, _ in docs]
        lengths = self.model.tokenizer(texts, add_special_tokens=True, truncation=False, return_length=True,
                                       verbose=False)["length"]
        with inference_context():
            vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=self.normalized,
                                     show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(vecs, dtype=np.float32), [n > self.max_tokens for n in lengths]
