"""The whole loop as a Python API: :class:`Project` is the context every stage runs in — the config, the
cluster client, the dataset, the cache root, the console — and runs each stage (esdistill/stages/), or all.

    from esdistill import Project, load_config
    project = Project(load_config("examples/scifact.toml"))
    report = project.run()            # index → candidates → teacher (fit) → train → deploy → evaluate

Each stage method (``project.train()``) is answered by the stage module that owns it and returns the stage's
info record (``cached: True`` when nothing had to be done). Keys chain: a stage's key includes its upstream
stage's key, so changing an early parameter recomputes what follows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import distributed, stages
from .budget import resolve_max_positives
from .cache import StageCache
from .backends import backend_for
from .cluster import connect
from .config import RunConfig
from .console import EstimatingProgress
from .data import DRAWN_PREFIXES, Dataset, Doc, load_dataset, pseudo_queries, title_queries
from .environment import environment, environment_label  # noqa: F401 - re-exported (bench/, older callers)
from .errors import ClusterError, InputError
from .indexing import fetch_docs, iter_index_docs
from .stages import StageKeys
from .stages.base import model_available  # noqa: F401 - re-exported


def make_progress(console: Console | None = None, on_estimate=None) -> Progress:
    return EstimatingProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
                              on_estimate=on_estimate)


class Project:
    """One configured run: the client, the dataset, the cache root, the console; every stage's work is a class
    of :mod:`esdistill.stages` made over it (:meth:`part`), its methods answered here (:meth:`__getattr__`)."""

    def __init__(self, cfg: RunConfig, console: Console | None = None, client=None, bundle=None):
        """``bundle`` (an :class:`esdistill.bundle.Bundle`): run the model stages from it, with no cluster —
        its data, the cluster-side facts and caches it carries, its base models."""
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        if not distributed.is_main():  # data-parallel training (torchrun): rank 0 speaks for every process
            self.console = Console(stderr=True, quiet=True)
        self._client = client
        self.workdir = Path(cfg.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.stage_seconds: dict[str, float] = {}
        self.stage_estimates: dict[str, float] = {}  #: seconds each stage was expected to take (its first batches)
        self._stage_name: str | None = None
        self.progress: Progress | None = None
        self.keys = StageKeys(self)
        self._memo: dict[Any, Any] = {}  # per instance: a cache on the class would keep every project alive
        self.bundle = bundle
        if bundle is not None:
            bundle.register_models(self.workdir)
            bundle.seed_cache(self.workdir)

    def _once(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # -- shared state ---------------------------------------------------------------------------------
    @property
    def client(self):
        if self.bundle is not None:
            raise ClusterError("this step needs the Elasticsearch cluster, and the project runs offline from a bundle",
                               hint="run it where the cluster is, after `esdistill bundle import`")
        if self._client is None:
            self._client = connect(self.cfg.cluster_settings())
        return self._client

    @property
    def backend(self):
        """The search backend of :attr:`client` (:mod:`esdistill.backends`): how the stages talk to the engine."""
        return backend_for(self.client)

    @cached_property
    def dataset(self) -> Dataset:
        if self.bundle is not None:
            return self.bundle.dataset(self.cfg.data.name)
        doc_exists = None
        if self.cfg.data.index:
            def doc_exists(ids):
                return set(fetch_docs(self.client, self.cfg.data.index, ids, self.cfg.data.text_fields))
        ds = load_dataset(self.cfg.data, self.workdir / "datasets", doc_exists)
        if not ds.train_queries:
            raise InputError("no training queries", hint="check data.train_split / data.train_queries")
        return ds

    @cached_property
    def train_queries(self) -> dict[str, str]:
        """Every query the teacher labels: the judged training queries, the query log, and queries drawn from the
        corpus — sentences (``data.pseudo_queries``) and titles (``data.title_queries``). Only the judged ones fit
        the teacher."""
        if self.bundle is not None:
            return self.bundle.train_queries()  # pseudo-queries as the cluster side drew them
        ds, n, nt = self.dataset, self.cfg.data.pseudo_queries, self.cfg.data.title_queries
        out = {**ds.query_log, **ds.train_queries}

        def docs():
            return (ds.corpus.values() if ds.corpus is not None
                    else iter_index_docs(self.client, self.cfg.data.index, self.text_fields))

        if n:
            pq = pseudo_queries(docs(), n, avoid=ds.all_test_queries.values())
            if len(pq) < n:
                self.log(f"pseudo-queries: only {len(pq)} of {n} could be drawn (documents without a sentence of "
                         "6-40 words)")
            out.update({q: t for q, t in pq.items() if q not in out})
        if nt:
            tq = title_queries(docs(), nt, avoid=[*ds.all_test_queries.values(), *out.values()])
            if len(tq) < nt:
                self.log(f"title queries: only {len(tq)} of {nt} could be drawn (titles of 3+ words, distinct, "
                         "none a test or training query)")
            out.update({q: t for q, t in tq.items() if q not in out})
        return out

    @cached_property
    def drawn_sources(self) -> dict[str, str]:
        """qid -> the document a drawn training query (a pseudo-query's sentence, a title) came from: with
        ``data.drawn_source = "leave_out"`` it is taken out of that query's candidates."""
        ds = self.dataset
        return {q: q.split("-", 1)[1] for q in self.train_queries
                if q.startswith(DRAWN_PREFIXES) and q not in ds.train_queries and q not in ds.query_log}

    @property
    def judged_qids(self) -> set[str]:
        """Training queries with at least one relevant judgment: those the teacher is cross-fitted on."""
        return {q for q, docs in self.dataset.train_qrels.items() if any(g > 0 for g in docs.values())}

    @property
    def text_fields(self) -> list[str]:
        return ["title", "text"] if self.cfg.data.beir else self.cfg.data.text_fields

    def docs(self, ids: list[str]) -> dict[str, Doc]:
        """Texts of documents by id, from the corpus file or the user's index."""
        if self.dataset.corpus is not None:
            return {i: self.dataset.corpus[i] for i in ids if i in self.dataset.corpus}
        return fetch_docs(self.client, self.cfg.data.index, ids, self.text_fields)

    def eval_queries(self) -> dict[str, str]:
        """The test queries that are evaluated: those with at least one relevant judgment. A query without one
        scores 0 for every system and would only dilute the means."""
        ds = self.dataset
        return {q: ds.test_queries[q] for q, docs in ds.test_qrels.items()
                if q in ds.test_queries and any(g > 0 for g in docs.values())}

    def log(self, msg: str) -> None:
        """A line for the user, printed as written: ``[full]`` is text here, not rich markup."""
        self.console.print(escape(msg))

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        self.console.rule(f"[bold cyan]{name}")
        owns = self.progress is None
        outer, self._stage_name = self._stage_name, name
        self.stage_estimates.pop(name, None)  # a stage run again is estimated again, as its wall time is measured
        if owns:
            self.progress = make_progress(self.console, self._estimated)
            self.progress.start()
        try:
            yield
        finally:
            if owns:
                self.progress.stop()
                self.progress = None
            self._stage_name = outer
            self.stage_seconds[name] = time.perf_counter() - t0

    def _estimated(self, task: str, seconds: float) -> None:
        """A progress bar's estimate of its task (esdistill.console.EstimatingProgress): summed per stage."""
        if self._stage_name is not None:
            self.stage_estimates[self._stage_name] = self.stage_estimates.get(self._stage_name, 0.0) + seconds

    def max_positives(self) -> int | None:
        """``data.max_positives_per_query`` resolved on the training judgments (``auto``:
        :func:`esdistill.budget.resolve_max_positives`); the first call logs what ``auto`` capped and why."""
        def resolve() -> int | None:
            cap, why = resolve_max_positives(self.cfg.data.max_positives_per_query, self.dataset.train_qrels)
            if why:
                self.log(why)
            return cap

        return self._once("max-positives", resolve)

    def _cache(self, stage: str, inputs: dict[str, Any]) -> StageCache:
        return StageCache(self.workdir, stage, inputs)

    @contextlib.contextmanager
    def engine(self):
        """The engine of the model-heavy stages (``[engine]``: this process, or Ray workers), closed after."""
        from .engine import make_engine

        eng = make_engine(self.cfg.engine, self.vectors_dir)
        try:
            yield eng
        finally:
            eng.close()

    @property
    def vectors_dir(self) -> Path:
        """Document vectors kept across stages and runs, per model (:mod:`esdistill.vectors`)."""
        return self.workdir / "vectors"

    def _parallel_inputs(self, what: str, caches: list[StageCache], first: str) -> None:
        """Under torchrun every process reads the same cached inputs; computing them in each would do the work
        once per process (and the cluster-side stages would all query the cluster)."""
        if distributed.world_size() > 1 and not all(c.done for c in caches):
            missing = sorted({c.stage for c in caches if not c.done})
            raise InputError(f"{what} under torchrun ({distributed.world_size()} processes) needs its inputs cached "
                             f"first; not cached: {', '.join(missing)}", hint=f"run `{first}` in one process first")

    # -- the stages ------------------------------------------------------------------------------------
    def part(self, spec: str):
        """The work of one stage (``"train:TrainStage"``: :data:`esdistill.stages.WORK`), made once per project."""
        return self._once(("work", spec), lambda: stages.work_class(spec)(self))

    def __getattr__(self, name: str):
        """A stage's method or property (``project.train()``, ``project.teacher_pairs()``, ``project.index_key``):
        answered by the stage module that owns it (:func:`esdistill.stages.methods`)."""
        spec = stages.methods().get(name) if not name.startswith("__") else None
        if spec is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(self.part(spec), name)

    def run(self) -> dict[str, Any]:
        """All stages in order (:func:`esdistill.stages.run`); finished stages are cache hits."""
        return stages.run(self)

    def run_offline(self) -> dict[str, Any]:
        """Every stage that needs no cluster, from the bundle (:func:`esdistill.stages.run_offline`)."""
        return stages.run_offline(self)
