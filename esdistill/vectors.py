"""A bi-encoder's document vectors kept on disk, by text, for every stage of a work dir that encodes the same
documents with the same model: the teacher's bi-encoder member (``bi_encoder:bge-small``) encodes the training
queries' BM25 candidates, and the evaluation's pipeline encodes the test queries' BM25 head with the same model at
the same length — on SciFact 4,801 and 5,072 documents, mostly the same ones, about 4 minutes each on a 2-core
AMD EPYC (bench/README.md, "The demo on a 2-core AMD EPYC"). With the store each is encoded once a work dir.

A store is one folder per (model fingerprint, token length, inference precision): the same text under another
model, length or precision is another vector. Vectors are unit length (every caller normalises). New vectors are
appended as chunk files (``<n>-<pid>-<random>.npz``: 16-byte text digests and float32 vectors, written to a
temporary name and renamed), so two processes may add to one store; a chunk that cannot be read is skipped (its
documents are encoded again). A store holding more than ``limit`` vectors is neither loaded nor extended: the
caller's in-memory cache still encodes each document once a process (a corpus of millions would not fit here).
Which folder a model's store is: :func:`esdistill.encoding.open_store`. Below every module (numpy alone).
"""

from __future__ import annotations

import hashlib
import os
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: vectors a store holds at most: about 300 MB at 384 dimensions
LIMIT = 200_000


def text_digest(text: str) -> bytes:
    """The 16-byte key of a document's text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class DocumentVectors(dict):
    """``text digest -> unit vector`` (a dict, as the callers' in-memory caches are), loaded from ``folder`` and
    written back to it by :meth:`update`. ``folder`` None: an in-memory dict only."""

    def __init__(self, folder: Path | None = None, limit: int = LIMIT):
        super().__init__()
        self.folder, self.limit, self.loaded = folder, limit, 0
        self.persist = folder is not None
        if folder is None or not folder.is_dir():
            return
        for path in sorted(folder.glob("*.npz")):
            try:
                with np.load(path, allow_pickle=False) as data:
                    digests, vectors = data["digests"], data["vectors"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                continue  # a chunk cut short (a full disk, a killed writer): its documents are encoded again
            super().update(zip((bytes(d) for d in digests), vectors.astype(np.float32, copy=False), strict=True))
            if len(self) > limit:  # over the limit: neither loaded nor extended
                super().clear()
                self.persist = False
                return
        self.loaded = len(self)

    def update(self, items: Iterable[tuple[bytes, np.ndarray]] = (), **kwargs) -> None:  # noqa: D102
        new = [(k, np.asarray(v, dtype=np.float32)) for k, v in dict(items, **kwargs).items() if k not in self]
        super().update(new)
        if not (self.persist and new) or len(self) > self.limit:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{len(self):08d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, digests=np.array([k for k, _ in new], dtype="S16"), vectors=np.stack([v for _, v in new]))
        tmp.replace(self.folder / f"{name}.npz")

    def clear(self) -> None:
        """Empty the memory (a caller's bound on it); what is on disk stays, and nothing more is written."""
        super().clear()
        self.persist = False
