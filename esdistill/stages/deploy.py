"""The ``deploy`` stage: a bi-encoder's versioned dense index (embedded here, from precomputed vectors, or
by the cluster's ML nodes) and the alias moved onto it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .. import served as served_mod
from ..config import fingerprint
from ..deploy import deploy_student, versioned_index
from ..indexing import index_meta, iter_index_docs
from ..jsonutil import dumps
from ..models import embedding_info, load_bi_encoder
from .base import StageWork, model_available


class DeployStage(StageWork):
    """A bi-encoder's versioned dense index and its alias."""

    def _deploy_key(self, which: str = "student") -> str:
        return fingerprint(self.deploy_inputs(which))

    def dense_index(self, which: str = "student") -> str:
        """The versioned dense index of the configured deploy of ``which`` (whether or not its alias points there)."""
        return versioned_index(self.p.dense_models()[which][2], self._deploy_key(which))

    def deploy(self, which: str = "student", move_alias: bool = True) -> dict[str, Any]:
        """Embed the corpus with the student (or ``which`` other bi-encoder of :meth:`dense_models`) into its
        versioned dense index — syncing an existing one with the source — and, with ``move_alias``, point its
        alias at it. Only ``deploy`` moves an alias: evaluation builds what it measures with ``move_alias=False``."""
        path_of, _, alias = self.p.dense_models()[which]
        if self.cfg.deploy.embed_in == "cluster" and which == "student" and move_alias:
            return self.deploy_in_cluster()
        path = path_of()
        t0 = time.perf_counter()
        label = "deploy" if which == "student" else f"deploy ({which})"
        with self.p.stage(label if move_alias else f"{label}, for evaluation"):
            max_length = self.cfg.deploy.effective_max_length(self.cfg.train)
            embedded = self.p._embed_cache(which)
            if embedded.done:  # vectors computed elsewhere (esdistill run --offline): index them as they are
                from ..embed import PrecomputedEmbedder

                model = PrecomputedEmbedder(embedded, (lambda: load_bi_encoder(path, max_length=max_length))
                                            if model_available(path) else None)
            else:
                model = load_bi_encoder(path, max_length=max_length)
            if self.p.dataset.corpus is not None:
                docs, total = self.p.dataset.corpus.values(), len(self.p.dataset.corpus)
            else:
                self.p.backend.refresh(self.cfg.data.index)
                docs = iter_index_docs(self.p.client, self.cfg.data.index, self.p.text_fields)
                total = self.p.backend.count(self.cfg.data.index)
            meta = served_mod.deploy_record(self.p, which, path)
            key = self._deploy_key(which)
            info = deploy_student(self.p.client, model, docs, total, alias, key, self.cfg.deploy, meta, self.p.progress,
                                  move_alias=move_alias)
            if info.get("read_only"):  # served (or once served): evaluation measures it as it is
                self.p.log(f"deploy: {info['index']} is served by deploy key {key[:10]}; evaluation reads it as it is "
                           f"({info['docs']} documents" + (f", the source has {total}: `esdistill deploy` syncs it)"
                                                           if info["docs"] != total else ")"))
                return info
            record = self.p.workdir / "deploy" / f"{key}.json"
            record.parent.mkdir(parents=True, exist_ok=True)
            prev = json.loads(record.read_text()) if record.exists() else {}
            # a resumed (or finished) deploy only counts what it embedded itself: add the earlier runs' count
            resumed = info["embedded_now"] < info["docs"]
            for count in ("truncated_docs", "from_vectors"):
                info[f"{count}_total"] = info[count] + (prev.get(f"{count}_total", 0) if resumed else 0)
            # what embedding cost, kept across reruns that find the index complete
            info["seconds"] = (time.perf_counter() - t0) if info["embedded_now"] else prev.get("seconds")
            record.write_text(dumps(info, indent=2))
            synced = (f" ({info['embedded_now']} indexed now, {info['from_vectors']} of them from precomputed vectors, "
                      f"{info['deleted_now']} deleted)" if info["from_vectors"] else
                      f" ({info['embedded_now']} embedded now, {info['deleted_now']} deleted)"
                      if info["embedded_now"] or info["deleted_now"] else " (up to date)")
            where = (f"alias {info['alias']} → {info['index']}" if move_alias else
                     f"alias {info['alias']} not moved (only `esdistill deploy` moves it)")
            self.p.log(f"deploy: {info['docs']} documents in {info['index']}{synced} ({info['dims']} dims, "
                       f"{info['similarity']}, {info['index_options']}, {info['replicas']} replicas); {where}")
            if info["truncated_docs"]:
                self.p.log(f"deploy: {info['truncated_docs']} of {info['embedded_now']} documents embedded now are longer "
                           f"than {info['max_tokens']} tokens and were truncated (deploy.max_length raises the limit)")
            return info

    def served_systems(self) -> list[str]:
        """The bi-encoders the configured evaluation serves from a dense index (hybrid serves the student)."""
        wanted = set(self.cfg.evaluate.systems) | ({"student"} if {"hybrid", "neural", "hybrid_cluster"}
                                                   & set(self.cfg.evaluate.systems) else set())
        return [w for w in self.p.dense_models() if w in wanted]

    def deploy_in_cluster(self) -> dict[str, Any]:
        """``deploy`` with ``deploy.embed_in = "cluster"``: the cluster's ML nodes embed the source index into the
        versioned dense index through the uploaded student's ingest pipeline (:mod:`esdistill.cluster_embed`);
        counts verified, then the alias moves. Refused clearly where the cluster has no ML (the test build)."""
        from ..cluster_embed import embed_in_cluster, require_deployed
        from ..deploy import dense_body, point_alias, prune, replica_count, update_meta
        from ..indexing import create_index, drop_own_index

        cfg, alias, key = self.cfg.deploy, self.cfg.dense_alias, self._deploy_key("student")
        index, model_id = versioned_index(alias, key), self.p.student_model_id()
        with self.p.stage("deploy (in the cluster)"):
            require_deployed(self.p.client, model_id)  # before anything is created
            source = self.cfg.bm25_index
            self.p._ensure_index()
            self.p.backend.refresh(source)
            total = self.p.backend.count(source)
            meta = index_meta(self.p.client, index)
            record = {**served_mod.deploy_record(self.p, "student", self.p.student_path()), "model": model_id,
                      "model_path": served_mod.local_path(self.p.student_path()), "embedded_by": "cluster"}
            if meta and meta.get("key") == key and self.p.backend.count(index) == total:
                update_meta(self.p.client, index, record)
                info = {"index": index, "docs": total, "embedded_now": 0}
            else:
                from ..models import read_meta

                # the trained student's record says its dims; a model from elsewhere is loaded to ask
                dims = read_meta(Path(self.p.student_path())).get("dims") or embedding_info(
                    load_bi_encoder(self.p.student_path(), device="cpu"))[0]
                drop_own_index(self.p.client, index)
                body = dense_body(dims, True, cfg, self.p.backend)
                body["settings"]["number_of_replicas"] = replica_count(self.p.client, cfg.replicas)
                create_index(self.p.client, index, body, {"key": key, "dims": dims, **record})
                done = embed_in_cluster(self.p.client, model_id, source, index, self.p.text_fields, total, cfg.slices,
                                        self.p.progress)
                info = {"index": index, "docs": done["docs"], "embedded_now": done["created"] + done["updated"],
                        "task": done["task"]}
            info.update(alias=alias, alias_left=point_alias(self.p.client, alias, index),
                        pruned=prune(self.p.client, alias, cfg.keep_versions), embedded_by=model_id)
            self.p.log(f"deploy: alias {alias} → {index} ({info['docs']} documents, embedded in the cluster by "
                       f"{model_id})")
            return info

    # -- the key: what this stage reads --------------------------------------------------------------
    def deploy_inputs(self, which: str) -> dict[str, Any]:
        d = self.cfg.deploy
        return {which: self.p.dense_models()[which][1](), "corpus": self.p.corpus_identity(),
                # who embeds (this process or the cluster's ML nodes) is not what: the same model's vectors
                "deploy": d.model_dump(exclude={"keep_versions", "batch_size", "encode_batch_size", "replicas",
                                                "max_length", "embed_in", "model_id", "slices"}),
                "max_length": d.effective_max_length(self.cfg.train), "fields": self.p.text_fields}
