"""Where the expensive model work runs: in this process (``local``, the default) or on Ray (``ray``).

Teacher scoring (queries × candidates cross-encoder passes) and corpus embedding (every document through the
student) are cut into chunks; each chunk is one job and one part file of its stage's cache, so a killed run
redoes only the chunks that have no part yet — on either engine, with the same cache keys and the same outputs.

Why Ray, and Ray Core's :class:`ray.util.ActorPool` rather than Ray Data: the unit of work here is the cache's
chunk (resumability is per part file), and an actor keeps its models loaded across chunks; Ray Data's
``map_batches`` would stream rows and own the batching, leaving no place to write a part per finished chunk.
Locally (a laptop, CI) Ray starts in-process with ``engine.workers`` actors; ``engine.address`` joins an existing
Ray cluster (``auto``, ``ray://head:10001``) whose workers may be CPU or GPU machines (``engine.gpus_per_worker``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import InputError

#: A job: (kind, model name, max length, batch size, payload). kind "score" (a cross-encoder's logits) or "cosine"
#: (a bi-encoder's): payload = [(query, document)];
#: kind "embed": payload = [(Doc, text hash)]. Results: float32 logits / (vectors float32, truncated flags,
#: whether the vectors are normalised).
Job = tuple[str, str, int | None, int, list]


def run_job(models: dict, job: Job, vectors: Path | None = None):
    """One chunk's model work, with ``models`` as the caller's cache of loaded models (by kind and name).
    ``vectors``: a folder of document vectors kept on disk (:mod:`esdistill.vectors`; a work dir's ``vectors/``)
    that a bi-encoder's cosines read and extend — else they are kept in memory for this process."""
    import numpy as np
    import torch

    from .encoding import inference_context
    from .models import load_bi_encoder, load_cross_encoder

    kind, name, max_length, batch_size, payload = job
    key = (kind, name, max_length)
    if key not in models:
        models[key] = (load_cross_encoder(name, max_length=max_length) if kind == "score"
                       else load_bi_encoder(name, max_length=max_length))
    model = models[key]
    if kind == "cosine":  # a bi-encoder as a teacher (an ensemble member): cosine of query and document
        if key + ("vectors",) not in models:
            from .encoding import open_store

            models[key + ("vectors",)] = open_store(vectors, name, model.max_seq_length)
        return _cosines(model, models[key + ("vectors",)], payload, batch_size)
    if kind == "embed":  # as the deploy embeds: the same class, vectors and truncation flags
        from .encoding import ModelEmbedder

        embedder = ModelEmbedder(model, batch_size)
        vecs, truncated = embedder.embed(payload)
        return vecs, truncated, bool(embedder.normalized)
    with inference_context():
        logits = model.predict(payload, batch_size=batch_size, activation_fn=torch.nn.Identity(),
                               show_progress_bar=False, convert_to_numpy=True)
    return np.asarray(logits, dtype=np.float32).reshape(-1)


#: Document vectors a process keeps for the bi-encoder teacher (by text digest): about 1.5 KB each at 384 dims.
VECTOR_CACHE = 200_000


def _cosines(model, cache: dict, payload: list, batch_size: int):
    """The cosine of each (query, document) pair. Each distinct text is encoded once; document vectors are kept
    in ``cache`` (one per process and model, or a work dir's :class:`esdistill.vectors.DocumentVectors`) across
    jobs, since BM25's candidates of different queries overlap (SciFact's 400 training queries: 12k pairs, at most
    5,183 documents).

    Queries go through ``encode_query`` and documents through ``encode_document``, so a model's own prompts apply
    (bge-small's query instruction, e5's ``query: `` / ``passage: ``); for a model without prompts (MiniLM) both
    equal plain ``encode``."""
    import numpy as np

    from .encoding import inference_context
    from .vectors import text_digest

    keys = [text_digest(d) for _, d in payload]
    todo = {k: d for k, (_, d) in zip(keys, payload, strict=True) if k not in cache}
    if len(cache) + len(todo) > VECTOR_CACHE:
        cache.clear()
        todo = {k: d for k, (_, d) in zip(keys, payload, strict=True)}
    texts = sorted({q for q, _ in payload})
    with inference_context():
        qv = dict(zip(texts, model.encode_query(texts, batch_size=batch_size, normalize_embeddings=True,
                                                show_progress_bar=False), strict=True))
        if todo:
            vecs = model.encode_document(list(todo.values()), batch_size=batch_size, normalize_embeddings=True,
                                         show_progress_bar=False)
            cache.update(zip(todo, vecs, strict=True))
    return np.array([float(np.dot(qv[q], cache[k])) for (q, _), k in zip(payload, keys, strict=True)],
                    dtype=np.float32)


class LocalEngine:
    """Jobs one after another in this process (models loaded once, kept for the run)."""

    name = "local"

    def __init__(self, vectors: Path | None = None):
        self.models: dict = {}
        self.vectors = vectors  #: a work dir's ``vectors/`` (:mod:`esdistill.vectors`): None keeps them in memory

    def prepare(self, names: Iterable[str]) -> None:
        """Nothing to do: this process loads the models it resolves."""

    def map(self, jobs: Iterable[tuple[Any, Job]]) -> Iterator[tuple[Any, Any]]:
        for tag, job in jobs:
            if (job[0], job[1], job[2]) not in self.models:
                self.models.clear()  # one model in memory at a time (the jobs come grouped by model)
            yield tag, run_job(self.models, job, self.vectors)

    def close(self) -> None:
        self.models.clear()


#: how a job names a model folder shipped through Ray's object store (then the folder's content digest)
SHIPPED = "esdistill-shipped:"


def folder_files(path: str) -> dict[str, bytes]:
    """A model folder's files (relative path -> bytes), training checkpoints left out."""
    root = Path(path)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "checkpoints"}


def folder_listing(path: str) -> dict[str, int] | None:
    """A model folder's files and sizes as this machine sees them (None: no such folder)."""
    root = Path(path)
    if not root.is_dir():
        return None
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "checkpoints"}


def materialize(name: str, files_ref: list) -> str:
    """The folder of a shipped model (``esdistill-shipped:<digest>``) on this worker's machine: written once per
    machine from the object store (``files_ref``: [an object ref of :func:`folder_files`]), atomically."""
    import os
    import shutil
    import tempfile

    import ray

    target = Path(tempfile.gettempdir()) / "esdistill-shipped" / name[len(SHIPPED):]
    if not (target / ".complete").exists():
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for rel, data in ray.get(files_ref[0]).items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
        (tmp / ".complete").touch()
        try:
            tmp.rename(target)
        except OSError:  # another worker on this machine was first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


class RayEngine:
    """Jobs spread over a pool of Ray actors, results in completion order (each is written as it arrives).

    The driver resolves the models a job names (a bundle's carried models are registered in the workers too), and
    :meth:`prepare`, before any job: with ``ship`` (``ship_models``: ``always``, or ``auto`` when joining a
    cluster by ``address``) each model folder goes to the workers through Ray's object store, so a worker on
    another machine never needs this machine's disk; with ``never`` and an address, every worker must see each
    folder as this process does, or the run is refused before it starts."""

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, quiet: bool = True, ship_models: str = "auto"):
        try:
            import ray
            from ray.util import ActorPool
        except ImportError:
            raise InputError("engine.kind = 'ray' needs Ray", hint="pip install 'esdistill[ray]'") from None
        import os

        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": not quiet,
                                      "configure_logging": not quiet, "ignore_reinit_error": True}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = max(int(workers * cpus_per_worker), workers)
            # the workers import esdistill from where this process does (a checkout is not on their path)
            here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": here, "HF_HUB_OFFLINE":
                                                  os.environ.get("HF_HUB_OFFLINE", "0"),
                                                  "TOKENIZERS_PARALLELISM": "false"}}
            ray.init(**kwargs)

        @ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
        class Worker:
            def __init__(self, threads: int, registered: dict):
                import torch

                from esdistill.models import register_model

                torch.set_num_threads(max(1, threads))
                for model_name, (folder, fp) in registered.items():  # a bundle's carried models, as in the driver
                    register_model(model_name, folder, fp)
                self.models: dict = {}

            def sees(self, path: str, listing: dict):
                import ray

                from esdistill.engine import folder_listing

                return folder_listing(path) == listing, ray.util.get_node_ip_address()

            def run(self, tag, job, shipped=None):
                from esdistill.engine import SHIPPED, materialize, run_job

                if job[1].startswith(SHIPPED):
                    job = (job[0], materialize(job[1], shipped), *job[2:])
                return tag, run_job(self.models, job)

        from .models import registered_models

        self._ray = ray
        self.address = address
        self.ship = ship_models == "always" or (ship_models == "auto" and address is not None)
        self.check_reach = ship_models == "never" and address is not None
        self._prepared: dict[str, tuple[str, list | None]] = {}  # model name -> (what workers load, [object ref])
        self.actors = [Worker.remote(int(cpus_per_worker), registered_models()) for _ in range(workers)]
        self.pool = ActorPool(self.actors)

    def prepare(self, names: Iterable[str]) -> None:
        """Make the models ``names`` loadable by every worker before any job runs: resolved here, and each local
        folder shipped through the object store (:attr:`ship`) or checked to be readable by every worker at the
        same path (refused, naming the nodes, when one is not). A hub id is loaded by each worker itself."""
        import hashlib

        from .models import resolve

        for name in names:
            if name in self._prepared:
                continue
            path = resolve(name)
            if not Path(path).is_dir():
                self._prepared[name] = (path, None)
            elif self.ship:
                files = folder_files(path)
                digest = hashlib.sha256()
                for rel, data in files.items():
                    digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
                self._prepared[name] = (SHIPPED + digest.hexdigest()[:24], [self._ray.put(files)])
            else:
                if self.check_reach:
                    listing = folder_listing(path)
                    seen = self._ray.get([a.sees.remote(path, listing) for a in self.actors])
                    blind = sorted({node for ok, node in seen if not ok})
                    if blind:
                        raise InputError(
                            f"engine.address {self.address}: the Ray workers on {', '.join(blind)} cannot read the "
                            f"model folder {path} as this machine has it (engine.ship_models = 'never')",
                            hint="set [engine] ship_models = 'auto' to send models through Ray's object store, or "
                                 "put the work dir on storage every node mounts at the same path")
                self._prepared[name] = (path, None)

    def map(self, jobs: Iterable[tuple[Any, Job]]) -> Iterator[tuple[Any, Any]]:
        """Results as they finish; at most two jobs per actor in flight (jobs are built lazily: a million queries'
        chunks are never all in memory)."""
        def sent(item):
            tag, job = item
            self.prepare([job[1]])  # a model the caller did not prepare: before its first job
            name, shipped = self._prepared[job[1]]
            return tag, (job[0], name, *job[2:]), shipped

        in_flight, window = 0, 2 * len(self.actors)
        for item in jobs:
            self.pool.submit(lambda actor, it: actor.run.remote(*it), sent(item))
            in_flight += 1
            if in_flight >= window:
                yield self.pool.get_next_unordered()
                in_flight -= 1
        while in_flight:
            yield self.pool.get_next_unordered()
            in_flight -= 1

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor)
        if self._started:
            self._ray.shutdown()


def make_engine(cfg, vectors: Path | None = None) -> LocalEngine | RayEngine:
    """The engine ``[engine]`` asks for (:class:`esdistill.config.EngineConfig`). ``vectors``: the work dir's
    document vectors (:mod:`esdistill.vectors`), which this process's engine keeps on disk; Ray's workers keep
    theirs in memory (a worker may be on another machine)."""
    if cfg.kind == "ray":
        return RayEngine(cfg.workers, cfg.address, cfg.gpus_per_worker, cfg.cpus_per_worker,
                         ship_models=cfg.ship_models)
    return LocalEngine(vectors)

