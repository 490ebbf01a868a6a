"""The student's query encoder at serving time: which runtime encodes, with how many threads, in what batches.

* :func:`resolve_query_encoder` — ``auto`` (the default) serves with ONNX Runtime's dynamic int8 graph on a
  CPU when the ``onnx`` extra is installed (4.6× PyTorch's encoding speed at −0.004 NDCG@10 on SciFact,
  ``bench/README.md``), else with PyTorch; ``torch``, ``onnx`` and ``onnx-int8`` pick one.
* :func:`load_query_encoder` — the student in that runtime: PyTorch, or the exported ONNX graph
  (:class:`ExportedEncoder`), exported once next to the caches.
* :func:`encoder_threads` — ONNX Runtime's intra-op threads per query (1: concurrent queries use the cores).
* :class:`BatchingEncoder` — with PyTorch, queries sent concurrently from many threads are encoded together:
  one encoding thread takes the first waiting query and every other one already waiting (up to ``max_batch``)
  and encodes them in one call. Alone, a query is encoded at once (no wait is added); under load, batches form
  while the previous one is encoded, so the cores run one batched forward pass instead of many competing small ones.
"""

from __future__ import annotations

import importlib.util
import os
import queue
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from .encoder_export import onnx_feed, read_manifest
from .errors import ModelError
from .models import _wrap, load_bi_encoder, resolve

#: Query encoders at serving time: PyTorch, ONNX Runtime (fp32), ONNX Runtime with dynamic int8 quantization.
QUERY_ENCODERS = ("torch", "onnx", "onnx-int8")


def onnx_installed() -> bool:
    """Whether the ``onnx`` extra (ONNX Runtime, and ``onnx`` for the int8 quantizer) can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def resolve_query_encoder(backend: str) -> str:
    """The runtime ``backend`` stands for: ``auto`` is ``onnx-int8`` on a machine without CUDA where the ``onnx``
    extra is installed, else ``torch`` (on a GPU PyTorch is the fast path). Others are returned as they are."""
    if backend != "auto":
        if backend not in QUERY_ENCODERS:
            raise ModelError(f"unknown query encoder {backend!r}",
                             hint=f"use auto or one of {', '.join(QUERY_ENCODERS)}")
        return backend
    import torch

    return "onnx-int8" if onnx_installed() and not torch.cuda.is_available() else "torch"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow —
    ``os.cpu_count()`` would count the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def encoder_threads(threads: int | None = None) -> int:
    """ONNX Runtime intra-op threads per query: ``threads``, else 1. A query is a few dozen tokens: under load,
    concurrent queries each on one core (ONNX Runtime releases the GIL, so they run side by side on every core)
    serve more than one query spread over all of them — 362 against 305 QPS with 2 threads on 2 cores
    (``bench/README.md``, "Load on the query path")."""
    return threads or 1


def batches(ev) -> bool:
    """Whether concurrent queries are encoded in batches (:class:`BatchingEncoder`): with PyTorch, where each
    call would otherwise spread over every core and compete with the others (``evaluate.encode_batch`` > 1).
    ONNX Runtime runs concurrent queries side by side instead; batching them was slower (dynamic int8
    quantises a batch's activations together, so a vector would also depend on its batch-mates)."""
    return resolve_query_encoder(ev.query_encoder) == "torch" and ev.encode_batch > 1


def served_encoder_label(ev) -> str:
    """How ``[evaluate]`` (:class:`esdistill.config.EvaluateConfig`) serves queries, in words for reports."""
    backend = resolve_query_encoder(ev.query_encoder)
    if backend == "torch":
        how = f"concurrent queries batched by up to {ev.encode_batch}" if batches(ev) else "one query per call"
        return f"PyTorch, {how}"
    runtime = {"onnx": "the exported ONNX graph, fp32", "onnx-int8": "the exported ONNX graph, int8"}[backend]
    return f"{runtime} (ONNX Runtime, {encoder_threads(ev.encoder_threads)} thread per query, queries side by side)"


#: queries the export is checked on (min cosine against sentence-transformers, encoder_export.MIN_COSINE)
CHECK_SAMPLE = ["what causes vitamin d deficiency", "does smoking raise the risk of lung cancer",
                "aspirin and heart attack prevention in older adults", "a", "COVID-19 transmission in schools",
                "how do statins lower cholesterol levels in the blood of patients with diabetes"]


def load_query_encoder(name: str, backend: str = "auto", export_dir: Path | None = None,
                       max_length: int | None = None, threads: int | None = None):
    """The student for encoding queries: ``torch`` (sentence-transformers), or ``onnx`` / ``onnx-int8`` — the
    student exported once as one ONNX graph with its tokenizer (:mod:`esdistill.encoder_export`, what the
    Node.js and Java clients run; the int8 graph has per-channel weights) and run by :class:`ExportedEncoder`.
    ``auto`` as in :func:`resolve_query_encoder`. ONNX Runtime gets ``threads`` intra-op threads per query
    (default 1, :func:`encoder_threads`); PyTorch's are process-wide and left as they are.

    The export lands in ``export_dir`` (default: ``<model>.onnx`` next to the model folder) and is reused; it is
    checked against sentence-transformers on :data:`CHECK_SAMPLE` before use. Documents stay embedded by the
    PyTorch model; only the query side changes (``bench/query_encoder.py`` measures what int8 moves)."""
    backend = resolve_query_encoder(backend)
    if backend == "torch":
        return load_bi_encoder(name, max_length=max_length)
    try:
        import onnxruntime  # noqa: F401
        from tokenizers import Tokenizer  # noqa: F401
    except ImportError as exc:
        raise ModelError(f"query encoder {backend!r} needs ONNX Runtime ({exc.name} is missing)",
                         hint="pip install 'esdistill[onnx]'") from None
    from .encoder_export import export_query_encoder

    target = resolve(name)
    out = Path(export_dir) if export_dir else Path(str(Path(target).resolve()) + ".onnx")
    manifest = read_manifest(out)
    if manifest is None or (max_length and manifest.get("max_length") != max_length):
        model = load_bi_encoder(name, max_length=max_length)
        try:
            export_query_encoder(model, out, {"model": name}, max_length or model.max_seq_length, CHECK_SAMPLE)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _wrap("ONNX export of", name, target, exc) from exc
    return ExportedEncoder(out, int8=backend == "onnx-int8", threads=threads)


class ExportedEncoder:
    """The exported query encoder (``model.onnx`` or ``model_int8.onnx``, ``tokenizer.json``, ``manifest.json``)
    run in Python with ONNX Runtime and Hugging Face ``tokenizers`` — as applications in other languages run it.
    No PyTorch in the loop, and ONNX Runtime releases the GIL while the graph runs, so concurrent searches in
    other threads keep going. ``encode`` takes one text (a vector) or a list (a matrix, padded as one batch;
    the graph pools over the attention mask, so in fp32 each vector is the one it gets alone — int8 quantises
    the batch's activations together, so there it is close, not equal). Vectors are L2-normalised by the graph."""

    def __init__(self, folder: Path, int8: bool = True, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = Path(folder)
        manifest = read_manifest(folder)
        if manifest is None:
            raise ModelError(f"{folder}: no exported query encoder (manifest.json missing)",
                             hint="esdistill export --onnx writes one")
        self.file = "model_int8.onnx" if int8 else "model.onnx"
        self.manifest, self.inputs = manifest, list(manifest["inputs"])
        self.dims, self.normalized, self.max_seq_length = int(manifest["dims"]), True, int(manifest["max_length"])
        self.prefix, self.lower = manifest.get("prefix", ""), bool(manifest.get("lowercase"))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.padded = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.padded.enable_padding()  # masked positions: their id does not matter
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = encoder_threads(threads), 1
        self.session = ort.InferenceSession(str(folder / self.file), options, providers=["CPUExecutionProvider"])

    def encode(self, text: str | list[str], normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        """The vector of ``text``, or a matrix for a list (other ``SentenceTransformer.encode`` arguments are
        accepted and ignored: the graph normalises, and a list is one batch)."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            return np.zeros((0, self.dims), dtype=np.float32)
        texts = [self.prefix + (t.lower() if self.lower else t) for t in texts]
        encodings = [self.tokenizer.encode(texts[0])] if len(texts) == 1 else self.padded.encode_batch(texts)
        vectors = self.session.run(["sentence_embedding"], onnx_feed(encodings, self.inputs))[0].astype(np.float32)
        return vectors[0] if isinstance(text, str) else vectors


class BatchingEncoder:
    """A query encoder that many threads share: each :meth:`encode` call waits for its vector while one
    encoding thread serves the queue in batches (see the module's docstring). The vectors equal the wrapped
    model's own, one query at a time (padding in a batch does not change a masked mean-pooled vector).

    ``stats`` counts queries and batches, and the largest batch; an error in the model reaches every caller of
    that batch. The encoding thread is a daemon: it ends with the process, or with :meth:`close`."""

    def __init__(self, model, max_batch: int = 32):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model, self.max_batch = model, max_batch
        self.max_seq_length = getattr(model, "max_seq_length", None)
        self.stats = {"queries": 0, "batches": 0, "largest": 0}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="esdistill-query-encoder", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:  # closing: answer what was taken, then stop
                    self._queue.put(None)
                    break
                batch.append(nxt)
            texts = [text for text, _, _ in batch]
            try:
                vectors = self.model.encode(texts, batch_size=len(texts), show_progress_bar=False,
                                            convert_to_numpy=True)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
                for _, _, fut in batch:
                    fut.set_exception(exc)
                continue
            self.stats["queries"] += len(batch)
            self.stats["batches"] += 1
            self.stats["largest"] = max(self.stats["largest"], len(batch))
            for (_, normalize, fut), vec in zip(batch, vectors, strict=True):
                fut.set_result(vec / max(float(np.linalg.norm(vec)), 1e-12) if normalize else vec)

    def encode(self, text: str | list[str], normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        """The vector of ``text`` (a 1-D array), or of each text in a list (a 2-D array), as the model's
        ``encode`` returns them. Other keyword arguments of ``SentenceTransformer.encode`` are accepted and
        ignored (the batch is this encoder's)."""
        if not self._thread.is_alive():
            raise ModelError("the query encoder was closed", hint="build the system again")
        texts = [text] if isinstance(text, str) else list(text)
        futures = []
        for t in texts:
            fut: Future = Future()
            self._queue.put((t, normalize_embeddings, fut))
            futures.append(fut)
        vectors = [f.result() for f in futures]
        return vectors[0] if isinstance(text, str) else np.stack(vectors) if vectors else np.zeros((0, 0))

    def close(self) -> None:
        """Stops the encoding thread once the queries already sent are answered."""
        self._queue.put(None)
        self._thread.join()
