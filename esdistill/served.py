"""What an alias serves: the deploy behind it, and the models that deploy recorded.

Applications query the alias; after a new deploy, a ``rollback`` or a changed config, the config's student is not
necessarily the model that embedded the index behind it. So the served path (``esdistill search``, ``monitor``,
``Project.systems(served=True)``, the load and Rally benchmarks) reads the record ``deploy`` wrote into the
versioned index's mapping ``_meta.esdistill`` — ``key`` (the deploy key), ``model`` (the folder of the model that
embedded it), ``model_key``, ``query_max_length`` and ``pipeline`` (how the pipeline that taught it reranks: its
reranker folders and the weights chosen for it) — and loads exactly that, or refuses, naming the deploy key and
what rebuilds it. It never trains, fits or scores: those are the config's stages, not what is served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .backends import backend_for
from .errors import ClusterError, EsdistillError, ModelError
from .indexing import index_meta

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import Project


def _loadable(path: str) -> bool:
    """A folder that is here, or a name (a hub id, ``minilm``) rather than the path of a folder elsewhere."""
    return Path(path).exists() or not Path(path).is_absolute()


def local_path(path: str) -> str:
    """A model folder as an absolute path (what a deploy records: a later run may start in another folder)."""
    return str(Path(path).resolve()) if Path(path).exists() else path


@dataclass(frozen=True)
class ServedDeploy:
    """The deploy an alias serves now: its versioned index and that index's ``_meta.esdistill``."""

    alias: str
    index: str
    meta: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.meta.get("key", ""))

    @property
    def model(self) -> str | None:
        """The model that embedded the index, as the deploy recorded it (a cluster deploy: the local folder)."""
        return self.meta.get("model_path") or self.meta.get("model")

    @property
    def model_key(self) -> str:
        """The served model's identity (its train stage's key; an older record: the deploy key)."""
        return str(self.meta.get("model_key") or self.key)

    def _rebuild(self) -> str:
        return (f"rebuild it with `esdistill deploy -c CONFIG` using the config that deployed it (key {self.key}"
                + (f", model {self.meta['model_key']}" if self.meta.get("model_key") else "")
                + f"), or serve this config's student: `esdistill deploy -c CONFIG`; `esdistill versions -c CONFIG` "
                "lists what the alias served")

    def model_path(self) -> str:
        """The folder (or name) of the served model; refuses when it is not on this machine."""
        path = self.model
        if not path:
            raise ModelError(f"alias {self.alias!r} serves {self.index!r} (deploy key {self.key}), whose record "
                             "names no model", hint=self._rebuild())
        if not _loadable(path):
            raise ModelError(f"alias {self.alias!r} serves {self.index!r} (deploy key {self.key}), embedded by the "
                             f"model in {path}, which is not on this machine: queries encoded by any other model "
                             "would return plausible, wrong hits", hint=self._rebuild())
        return path

    def pipeline(self) -> dict[str, Any]:
        """How the pipeline that taught the served student reranks (recorded by the deploy); refuses without it."""
        rec = self.meta.get("pipeline")
        if not rec:
            raise ModelError(f"alias {self.alias!r} serves {self.index!r} (deploy key {self.key}), whose record "
                             "does not say which pipeline taught it (deployed by an older esdistill, or before "
                             "its teacher was on this machine)", hint=self._rebuild())
        return rec


def served_deploy(client, alias: str) -> ServedDeploy:
    """The deploy behind ``alias`` (one esdistill index), read from the cluster now."""
    backend = backend_for(client)
    indices = sorted(backend.alias_targets(alias))
    if not indices:
        raise ClusterError(f"alias {alias!r} points at no index: nothing is served",
                           hint="run `esdistill deploy -c CONFIG` first")
    if len(indices) > 1:
        raise ClusterError(f"alias {alias!r} points at {len(indices)} indices ({', '.join(indices)}): which model "
                           "embedded the hits is unknown", hint="point it at one (esdistill deploy or rollback)")
    meta = index_meta(backend, indices[0]) or {}
    if not meta.get("key"):
        raise ClusterError(f"alias {alias!r} serves {indices[0]!r}, which esdistill did not deploy (no "
                           "_meta.esdistill.key): its model is unknown", hint="run `esdistill deploy -c CONFIG`")
    return ServedDeploy(alias, indices[0], meta)


def deploy_record(project: Project, which: str, path: str) -> dict[str, Any]:
    """The ``_meta.esdistill`` a deploy of ``which`` (student, zero_shot, judgments) embedded by the model at
    ``path`` writes: what the served path loads (:class:`ServedDeploy`)."""
    out: dict[str, Any] = {"model": local_path(path), "model_key": project.dense_models()[which][1](),
                           "query_max_length": project.cfg.train.max_length, "dataset": project.cfg.data.name,
                           "system": which}
    if Path(path).is_dir():  # the weights themselves: one key's trainings may differ (a time budget's steps)
        from .models import model_fingerprint

        out["weights"] = model_fingerprint(str(path))
    if which == "student":
        out["teacher"] = project._teacher_cache().key
        try:
            out["pipeline"] = pipeline_record(project)
        except EsdistillError as e:  # the deploy goes on; the served pipeline will be refused, saying why
            project.log(f"deploy: the pipeline that taught this student is not recorded: {e.message}")
            out["pipeline"] = None
    return out


def pipeline_record(project: Project) -> dict[str, Any] | None:
    """What the served path needs to run the pipeline that taught the student, without fitting or scoring: the
    reranker's folders (or names) and the weights chosen for the pipeline's rerank depth. None when the teacher's
    fits or scores are not cached here (recording them would mean computing them)."""
    t, ev = project.cfg.teacher, project.cfg.evaluate
    rec: dict[str, Any] = {"kind": t.kind, "teacher_id": project.teacher_id(), "rerank_depth": ev.rerank_depth,
                           "max_length": t.max_length, "batch_size": t.batch_size}
    if t.kind == "request":  # the user's search, run by the cluster: the config's request file
        return rec
    fits = {"ict": project._ict_cache, "judged": project._fit_cache}
    if any(not fits[f]().done for f in project.fits_needed()):
        return None
    caches = (project.member_caches() if t.kind == "ensemble"
              else [c for c in (project._teacher_cache(True), project._teacher_cache(False)) if c is not None])
    if t.ensemble_weights is None and not all(c.done for c in caches):
        return None
    if t.kind == "ensemble":
        members = []
        for m in project.members():
            model = (m.model if m.kind in ("bi_encoder", "cross_encoder") else
                     project._fit_info(corpus=m.kind == "corpus")["models"]["full"] if m.kind in ("fit", "corpus")
                     else None)
            members.append({"spec": m.spec, "model": local_path(model) if model else None})
        return {**rec, "members": members, "weights": project.ensemble_weights(project.pipeline_depth())}
    if t.bm25_weight == "auto" and not project._teacher_cache(True).done:
        return None
    return {**rec, "kind": "cross_encoder", "model": local_path(project.teacher_model()),
            "bm25_weight": project.pipeline_weight()}


def served_pipeline(project: Project, deploy: ServedDeploy):
    """The pipeline that taught the served student, as its deploy recorded it (a search request: the config's)."""
    from . import ensemble as ensemble_mod
    from . import search as search_mod
    from .models import load_bi_encoder, load_cross_encoder

    rec, ev = deploy.pipeline(), project.cfg.evaluate

    def model(path: str):
        if not _loadable(path):
            raise ModelError(f"the pipeline that taught {deploy.index!r} (deploy key {deploy.key}) reranks with "
                             f"{path}, which is not on this machine", hint=deploy._rebuild())
        return path

    def request(search):
        if search is None:
            raise ModelError(f"the pipeline that taught {deploy.index!r} (deploy key {deploy.key}) is a search "
                             "request, and this config names none", hint="use the config that deployed it")
        return search

    if rec["kind"] == "request":
        return search_mod.RequestPipeline(request(project.request_search()), ev.k)
    if rec["kind"] == "ensemble":
        scorers = []
        for m in rec["members"]:
            member = ensemble_mod.parse(m["spec"])
            if member.kind == "bm25":
                scorers.append((member, None))
            elif member.kind == "request":
                scorers.append((member, request(project.request_member_search())))
            elif member.kind == "bi_encoder":
                scorers.append((member, load_bi_encoder(model(m["model"]), max_length=rec["max_length"])))
            else:
                scorers.append((member, load_cross_encoder(model(m["model"]), max_length=rec["max_length"])))
        reranker, weight = ensemble_mod.EnsembleReranker(scorers, list(rec["weights"])), 0.0
    else:
        reranker = load_cross_encoder(model(rec["model"]), max_length=rec["max_length"])
        weight = float(rec["bm25_weight"])
    return search_mod.Pipeline(project.client, project.cfg.bm25_index, project.text_fields, reranker,
                               rec["rerank_depth"], ev.k, rec["batch_size"], bm25_weight=weight)
