"""``export``: the student traced with eland (optionally uploaded), and the deployed student as a portable
query encoder (ONNX)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import candidates as cand_mod
from ..errors import ClusterError
from ..indexing import index_meta
from ..models import load_bi_encoder, model_fingerprint
from .base import StageWork
from .keys import trained_key


class ExportStage(StageWork):
    """The student for the cluster's ML nodes, and as a query encoder."""

    def export(self, upload: bool = False, start: bool = False, replace: bool = False) -> dict[str, Any]:
        """Trace the student with eland, verify it against sentence-transformers; optionally upload it."""
        from .. import eland_export as ex

        path = self.p.student_path()
        cache = self.p._cache("export", {"student": trained_key(self.p._train_cache())})
        with self.p.stage("export"):
            name = self.student_model_id()
            export = ex.trace_student(path, cache.dir, self.cfg.deploy.effective_max_length(self.cfg.train),
                                      name=name)
            sample = [d.full_text for d in list(self.p.docs(sorted(self.p.candidates_frame().docid.unique())[:16]).values())]
            sample += list(self.p.dataset.train_queries.values())[:4]
            cos = ex.verify_traced(export, path, sample)
            self.p.log(f"export: {export.model_id} traced to {export.model_path} ({export.dims} dims, "
                       f"max {export.max_length} tokens); min cosine vs sentence-transformers {cos:.6f}")
            info = {"model_id": export.model_id, "folder": str(cache.dir), "min_cosine": cos}
            if upload:
                backend = self.p.backend
                info.update(backend.upload_model(export, start=start, replace=replace))
                backend.put_ingest_pipeline(f"{export.model_id}-embed",
                                            backend.embed_pipeline(export.model_id, self.p.text_fields))
                self.p.log(f"export: uploaded {export.model_id}" + (" and started it" if start else "")
                           + (f" (the cluster's _predict vs sentence-transformers: min cosine "
                              f"{info['predict_min_cosine']:.6f})" if "predict_min_cosine" in info else "")
                           + f"; ingest pipeline {export.model_id}-embed")
            return info

    def student_model_id(self) -> str:
        """The id ``esdistill export`` uploads the student under (``deploy.model_id`` overrides it)."""
        return self.cfg.deploy.model_id or f"esdistill-{self.cfg.data.name}-{trained_key(self.p._train_cache())[:8]}"

    def export_encoder(self, out: Path | None = None) -> dict[str, Any]:
        """The deployed student as a portable query encoder (ONNX fp32 + int8, ``tokenizer.json``, a manifest
        naming this deploy): see :mod:`esdistill.encoder_export`. Written to ``out`` (default
        ``<workdir>/encoders/<deploy key>``); an export already there for this deploy is kept."""
        from .. import encoder_export as ee
        from ..deploy import VECTOR_FIELD

        key, alias, index = self.p._deploy_key("student"), self.cfg.dense_alias, self.p.dense_index("student")
        out = Path(out) if out else self.p.workdir / "encoders" / key
        with self.p.stage("export (query encoder)"):
            meta = index_meta(self.p.client, index)
            if not meta or meta.get("key") != key:
                raise ClusterError(f"this config's deploy {index!r} is not in the cluster, so there is nothing to "
                                   "encode queries for", hint="run `esdistill deploy` first")
            live = set(self.p.backend.alias_targets(alias))  # none yet: said below
            if live != {index}:
                self.p.log(f"[yellow]note:[/] alias {alias!r} serves {sorted(live) or 'nothing'}, not {index!r}: "
                           "clients refuse this encoder until `esdistill deploy` points the alias at it")
            complete = ee.is_complete(out, key)
            ev = self.cfg.evaluate
            manifest = ee.manifest_for(
                deploy_key=key, alias=alias, index=index, vector_field=VECTOR_FIELD,
                similarity=self.p.backend.vector_similarity(index) or "cosine",
                model=ee.read_manifest(out)["model"] if complete else model_fingerprint(self.p.student_path()),
                knn={"k": ev.k, "num_candidates": ev.num_candidates}, bm25_index=self.cfg.bm25_index,
                bm25_query=cand_mod.bm25_query("{{query}}", self.p.text_fields), rrf_k=ev.rrf_k,
                fusion=ev.hybrid_fusion, weight=ev.hybrid_weight,
                engine=self.p.backend.name, knn_request=self.p.backend.knn_body(
                    ee.VECTOR_PLACEHOLDER, ev.k, ev.num_candidates, field=VECTOR_FIELD, oversample=ev.oversample))
            if complete:  # the graphs are this deploy's; the settings are the config's now
                kept, changed = ee.update_manifest(out, manifest)
                self.p.log(f"export: query encoder for {index} in {out} (cached"
                           + (f"; manifest updated: {', '.join(changed)})" if changed else ")"))
                return kept
            model = load_bi_encoder(self.p.student_path(), max_length=self.cfg.train.max_length, device="cpu")
            sample = list(self.p.eval_queries().values())[:24] + list(self.p.dataset.train_queries.values())[:8]
            info = ee.export_query_encoder(model, out, manifest, model.max_seq_length, sample)
            self.p.log(f"export: query encoder for {index} in {out} ({info['dims']} dims, max {info['max_length']} "
                       f"tokens; min cosine vs sentence-transformers: fp32 "
                       f"{info['min_cosine_vs_sentence_transformers']['model.onnx']:.6f}, int8 "
                       f"{info['min_cosine_vs_sentence_transformers']['model_int8.onnx']:.4f})")
            return info
