"""The student's query encoder at serving time: which runtime encodes, with how many threads, in what batches.

* :func:`resolve_query_encoder` — ``auto`` (the default) serves with ONNX Runtime's dynamic int8 graph on a CPU
  when the ``onnx`` extra is installed (3× PyTorch's speed at −0.001 NDCG@10 on SciFact, ``bench/README.md``),
  else with PyTorch; ``torch``, ``onnx`` and ``onnx-int8`` pick one.
* :func:`load_query_encoder` — the student in that runtime, exported once to ONNX next to the caches.
* :func:`encoder_threads` — intra-op threads sized to the cores this process may use.
* :class:`BatchingEncoder` — queries sent concurrently from many threads are encoded together: one encoding
  thread takes the first waiting query and every other one already waiting (up to ``max_batch``) and encodes
  them in one call. Alone, a query is encoded at once (no wait is added); under load, batches form while the
  previous one is encoded, so the cores run one batched forward pass instead of many competing small ones.
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

from .errors import ModelError
from .models import _wrap, load_bi_encoder, resolve

#: Query encoders at serving time: PyTorch, ONNX Runtime (fp32), ONNX Runtime with dynamic int8 quantization.
QUERY_ENCODERS = ("torch", "onnx", "onnx-int8")


def onnx_installed() -> bool:
    """Whether the ``onnx`` extra (ONNX Runtime and optimum's ONNX Runtime models) can be imported."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "optimum.onnxruntime"))
    except ModuleNotFoundError:  # "optimum" itself missing
        return False


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


def encoder_threads(threads: int | None = None) -> int:
    """Intra-op threads for the query encoder: ``threads``, or every core this process may run on (its CPU
    affinity, which containers and ``taskset`` narrow — ``os.cpu_count()`` would count the host's)."""
    if threads:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def served_encoder_label(ev) -> str:
    """How ``[evaluate]`` (:class:`esdistill.config.EvaluateConfig`) serves queries, in words for reports."""
    backend = resolve_query_encoder(ev.query_encoder)
    runtime = {"torch": "PyTorch", "onnx": "ONNX Runtime fp32", "onnx-int8": "ONNX Runtime int8"}[backend]
    threads = f", {encoder_threads(ev.encoder_threads)} threads" if backend != "torch" else ""
    return f"{runtime}{threads}, concurrent queries batched by up to {ev.encode_batch}"


def _quantization_config() -> str:
    """The ONNX Runtime dynamic-quantization preset matching this CPU (what ``optimum`` names them)."""
    import platform

    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else "avx2"


def load_query_encoder(name: str, backend: str = "auto", export_dir: Path | None = None,
                       max_length: int | None = None, threads: int | None = None):
    """The student for encoding queries: ``torch``, or exported once to ONNX (``onnx``, ``onnx-int8``) through
    sentence-transformers' ONNX backend (needs the ``onnx`` extra: optimum-onnx, onnxruntime); ``auto`` as in
    :func:`resolve_query_encoder`. ONNX Runtime sessions get ``threads`` intra-op threads (default: this
    process's cores); PyTorch's are process-wide and left as they are.

    The export lands in ``export_dir`` (default: ``<model>.onnx`` next to the model folder) and is reused.
    Documents stay embedded by the PyTorch model; only the query side changes, so check the quality with
    ``bench/query_encoder.py`` (int8 moves scores slightly)."""
    backend = resolve_query_encoder(backend)
    if backend == "torch":
        return load_bi_encoder(name, max_length=max_length)
    try:
        import onnxruntime
        from optimum.onnxruntime import ORTModelForFeatureExtraction  # noqa: F401
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ModelError(f"query encoder {backend!r} needs ONNX Runtime and optimum ({exc.name} is missing)",
                         hint="pip install 'esdistill[onnx]'") from None
    target = resolve(name)
    out = Path(export_dir) if export_dir else Path(str(Path(target).resolve()) + ".onnx")
    if not (out / "onnx" / "model.onnx").exists():
        try:
            SentenceTransformer(target, backend="onnx", device="cpu").save_pretrained(str(out))
        except Exception as exc:  # noqa: BLE001
            raise _wrap("ONNX export of", name, target, exc) from exc
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = encoder_threads(threads)
    kwargs: dict[str, Any] = {"session_options": options}
    if backend == "onnx-int8":
        from sentence_transformers.backend import export_dynamic_quantized_onnx_model

        qcfg = _quantization_config()

        def quantized() -> Path | None:  # model_qint8_<cfg>.onnx or model_quint8_<cfg>.onnx, by optimum version
            return next(iter(sorted((out / "onnx").glob(f"model_*int8_{qcfg}.onnx"))), None)

        if quantized() is None:
            export_dynamic_quantized_onnx_model(SentenceTransformer(str(out), backend="onnx", device="cpu"),
                                                qcfg, str(out))
        kwargs["file_name"] = f"onnx/{quantized().name}"
    model = SentenceTransformer(str(out), backend="onnx", device="cpu", model_kwargs=kwargs)
    if max_length:
        model.max_seq_length = max_length
    return model


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
