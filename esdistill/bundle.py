"""Model stages away from the cluster: a *bundle* goes to a machine that cannot reach Elasticsearch (a GPU box),
the model-heavy stages run there, and their results come back as cache hits.

    esdistill bundle export -c my.toml --out bundle/        # where the cluster is: index, candidates, test BM25
    esdistill run --offline --bundle bundle/ --workdir w/   # on the GPU box: teacher, students, vectors, pipeline
    esdistill bundle pack --bundle bundle/ --workdir w/ --out back/      # ≤ 16 MiB parts
    esdistill bundle import back/ -c my.toml                # where the cluster is; then deploy / evaluate

A bundle is the data the offline stages read — the corpus, every query and judgment, the cluster-side stages'
cache folders (``candidates``, ``test-candidates``), the facts only the cluster knows (the index's identity) — plus, on
request, the base models as float16 copies. Both sides compute every stage key the same way
(:mod:`esdistill.stages`), so what comes back lands in the same cache folders the cluster side looks in.
What comes back (:func:`pack`) is the offline stages' folders: the fitted teacher's records and scores, the
student (float16 weights, upcast again on import), the vectors of the corpus and of the test queries, and the
pipeline's rankings of the test queries. The control student's and the teacher's weights stay behind unless
asked for: a benchmark needs their vectors and rankings, not their weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from .config import RunConfig, build_config
from .data import Dataset, Doc, LoadReport
from .errors import InputError
from .jsonutil import dumps
from . import stages as stage_table
from .stages import STAGES

FORMAT = 1
#: the stages whose cache folders come back: those that need no cluster, and the pipeline's test-query run
#: (``evaluate-system``), which the offline side computes from the BM25 answers the bundle carries
OFFLINE_STAGES = tuple(n for n, s in STAGES.items() if not s.needs_cluster) + ("evaluate-system",)
FP16_MARK = "esdistill-fp16.json"


# ------------------------------------------------------------------------------------------ float16 copies
def to_fp16(src: Path, dst: Path) -> int:
    """Copy a model folder with its float32 safetensors weights stored as float16 (half the bytes). Returns the
    bytes written. :func:`from_fp16` restores float32."""
    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    converted = []
    for p in sorted(src.rglob("*")):
        if p.is_dir() or p.relative_to(src).parts[0] == "checkpoints":
            continue
        out = dst / p.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".safetensors":
            tensors = load_file(str(p))
            save_file({k: (v.half() if v.is_floating_point() and v.dtype.itemsize > 2 else v).contiguous()
                       for k, v in tensors.items()}, str(out), metadata={"format": "pt"})
            converted.append(p.relative_to(src).as_posix())
        else:
            shutil.copy2(p, out)
    (dst / FP16_MARK).write_text(json.dumps({"float16": converted}))
    return sum(f.stat().st_size for f in dst.rglob("*") if f.is_file())


def from_fp16(folder: Path) -> None:
    """Upcast the weights :func:`to_fp16` stored as float16 back to float32, in place."""
    import torch
    from safetensors.torch import load_file, save_file

    mark = folder / FP16_MARK
    if not mark.exists():
        return
    for rel in json.loads(mark.read_text())["float16"]:
        p = folder / rel
        tensors = load_file(str(p))
        save_file({k: (v.to(torch.float32) if v.dtype == torch.float16 else v).contiguous()
                   for k, v in tensors.items()}, str(p), metadata={"format": "pt"})
    mark.unlink()


# --------------------------------------------------------------------------------------------- the bundle
class Bundle:
    """A bundle folder, read on the offline side."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        meta = self.folder / "bundle.json"
        if not meta.exists():
            raise InputError(f"{self.folder} is not an esdistill bundle (no bundle.json)",
                             hint="make one with `esdistill bundle export` where the cluster is")
        self.meta = json.loads(meta.read_text())
        if self.meta.get("format") != FORMAT:
            raise InputError(f"{meta}: bundle format {self.meta.get('format')} is not {FORMAT}",
                             hint="export the bundle again with this version of esdistill")

    @property
    def facts(self) -> dict[str, Any]:
        return self.meta["facts"]

    def config(self, workdir: Path | str, profile: str | None = None) -> RunConfig:
        values = dict(self.meta["config"])
        values["workdir"] = str(workdir)
        return build_config(values, profile=profile or values.get("profile"), where=str(self.folder / "bundle.json"))

    def dataset(self, name: str) -> Dataset:
        data = self.folder / "data"
        corpus_df = pd.read_parquet(data / "corpus.parquet")
        corpus = {i: Doc(i, t, x) for i, t, x in zip(corpus_df["id"], corpus_df["title"], corpus_df["text"],
                                                     strict=True)}
        q = pd.read_parquet(data / "queries.parquet")
        by_role = {role: dict(zip(g.qid, g.text, strict=True)) for role, g in q.groupby("role")}
        qrels_df = pd.read_parquet(data / "qrels.parquet")
        qrels = {split: {} for split in ("train", "test")}
        for split, qid, docid, grade in zip(qrels_df["split"], qrels_df["qid"], qrels_df["docid"], qrels_df["grade"],
                                            strict=True):
            qrels[split].setdefault(qid, {})[docid] = int(grade)
        return Dataset(name, corpus, by_role.get("train", {}), qrels["train"], by_role.get("test", {}),
                       qrels["test"], self.facts["corpus_fingerprint"], LoadReport(), by_role.get("log", {}),
                       by_role.get("leaked", {}), by_role.get("test-unevaluated", {}))

    def train_queries(self) -> dict[str, str]:
        """Every query the teacher labels, as the cluster side drew them (pseudo-queries included)."""
        q = pd.read_parquet(self.folder / "data" / "queries.parquet")
        return {qid: t for qid, t, role in zip(q.qid, q.text, q.role, strict=True) if role in ("train", "log", "pseudo")}

    def seed_cache(self, workdir: Path) -> list[str]:
        """Copy the bundle's cluster-side stage folders into ``workdir`` (those not there yet)."""
        copied = []
        for stage_dir in sorted((self.folder / "cache").glob("*/*")):
            target = Path(workdir) / stage_dir.parent.name / stage_dir.name
            if not (target / "done.json").exists():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(stage_dir, target)
                copied.append(f"{stage_dir.parent.name}/{stage_dir.name}")
        return copied

    def register_models(self, workdir: Path) -> dict[str, str]:
        """Make the bundle's base models loadable under the names the config uses (float32 copies in
        ``workdir/models``), with the fingerprints they had where the bundle was made."""
        from .models import register_model

        out = {}
        for name, m in self.meta.get("models", {}).items():
            target = Path(workdir) / "models" / hashlib.sha1(name.encode()).hexdigest()[:12]
            if not (target / "config.json").exists() and not (target / "modules.json").exists():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(self.folder / m["path"], target)
                from_fp16(target)
                from .models import make_loadable

                make_loadable(target)
            register_model(name, str(target), m["fingerprint"])
            out[name] = str(target)
        return out


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def export(project, out: Path, models: list[str] | None = None) -> dict[str, Any]:
    """Run the cluster-side stages of ``project`` and write the bundle into ``out``. ``models`` names base models
    (as the config names them) to carry as float16 copies, for a machine that has none."""
    from .models import model_fingerprint, resolve

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty", hint="give an empty or new folder")
    (out / "data").mkdir(parents=True)
    stages = stage_table.bundle_out(project)  # the cluster-side stages' caches, made here where missing
    ds = project.dataset
    corpus = ds.corpus
    if corpus is None:  # the user's own index: its documents as they are now
        from .indexing import iter_index_docs

        corpus = {d.id: d for d in iter_index_docs(project.client, project.cfg.data.index, project.text_fields)}
    pd.DataFrame({"id": list(corpus), "title": [d.title for d in corpus.values()],
                  "text": [d.text for d in corpus.values()]}).to_parquet(out / "data" / "corpus.parquet",
                                                                          compression="zstd", index=False)
    roles = [("train", ds.train_queries), ("log", ds.query_log), ("test", ds.test_queries), ("leaked", ds.leaked),
             ("test-unevaluated", ds.unevaluated_test_queries),
             ("pseudo", {q: t for q, t in project.train_queries.items()
                         if q not in ds.train_queries and q not in ds.query_log})]
    pd.DataFrame([(q, t, role) for role, qs in roles for q, t in qs.items()],
                 columns=["qid", "text", "role"]).to_parquet(out / "data" / "queries.parquet", index=False)
    pd.DataFrame([(split, q, d, g) for split, qr in (("train", ds.train_qrels), ("test", ds.test_qrels))
                  for q, docs in qr.items() for d, g in docs.items()],
                 columns=["split", "qid", "docid", "grade"]).to_parquet(out / "data" / "qrels.parquet", index=False)
    for name, cache in stages.items():
        shutil.copytree(cache.dir, out / "cache" / name / cache.key)
    carried = {}
    for name in models or []:
        folder = Path(resolve(name))
        if not folder.is_dir():
            raise InputError(f"model {name!r} is not a local folder here; nothing to carry")
        rel = f"models/{hashlib.sha1(name.encode()).hexdigest()[:12]}"
        to_fp16(folder, out / rel)
        carried[name] = {"path": rel, "fingerprint": model_fingerprint(name)}
    values = json.loads(project.cfg.model_dump_json())
    values.pop("cluster", None)  # how to reach the cluster (and its secrets) has no business on the other side
    facts = {"index_identity": project.index_identity(), "index_key": project.index_key,
             "corpus_identity": project.corpus_identity(), "corpus_fingerprint": ds.corpus_fingerprint,
             "docs": len(corpus)}
    rs = project.request_search() or project.request_member_search()
    if rs is not None:  # what the cluster says about what the request names: part of its key on both sides
        facts["request_described"] = rs.described()
    meta = {"format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "config": values,
            "facts": facts, "models": carried, "stages": {n: c.key for n, c in stages.items()},
            "queries": {role: len(qs) for role, qs in roles}}
    (out / "bundle.json").write_text(dumps(meta, indent=2))
    return {"folder": str(out), "bytes": _size(out), **meta}


# ------------------------------------------------------------------------------------- the way back
def pack(project, out: Path, part_mb: float = 16.0, budget_mb: float = 64.0,
         weights: tuple[str, ...] = ("student",), vectors: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The offline stages' folders of ``project`` (only those of its current keys) as one tar, cut into parts of
    at most ``part_mb`` MiB. ``weights`` names the models whose weights travel (float16): ``student``,
    ``judgments``, ``teacher``; the rest travel as vectors and scores. ``vectors`` names the served models whose
    corpus and test-query vectors travel (default: all; a model the other side has, such as the zero-shot base,
    can be left to embed there). Refuses to exceed ``budget_mb``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # (name in the tar, folder, has weights to halve) of every offline stage's finished caches
    folders: list[tuple[str, Path, bool]] = [(f"{cache.stage}/{cache.key}", cache.dir, keep_weights) for
                                             cache, keep_weights in stage_table.bundle_back(project, weights, vectors)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:  # rankings and vectors shrink; weights less
        for arc, folder, keep in folders:
            for p in sorted(folder.rglob("*")):
                rel = p.relative_to(folder)
                if p.is_dir() or rel.parts[0] in ("parts", "checkpoints"):
                    continue
                if any(part.startswith("model") for part in rel.parts[:-1]):
                    continue  # weights travel as float16 copies (below), or not at all
                tar.add(p, arcname=f"{arc}/{rel.as_posix()}")
            if keep:
                for model_dir in sorted(d for d in folder.iterdir() if d.is_dir() and d.name.startswith("model")):
                    if model_dir.name.endswith(".fp16") or model_dir.name not in ("model", "model-full"):
                        continue  # fold models: their scores are what matters
                    half = Path(str(model_dir) + ".fp16")
                    shutil.rmtree(half, ignore_errors=True)
                    to_fp16(model_dir, half)
                    for p in sorted(half.rglob("*")):
                        if p.is_file():
                            tar.add(p, arcname=f"{arc}/{model_dir.name}/{p.relative_to(half).as_posix()}")
                    shutil.rmtree(half)
    data = buf.getvalue()
    if len(data) > budget_mb * 2**20:
        raise InputError(f"what would come back is {len(data) / 2**20:.1f} MiB, over the {budget_mb:g} MiB allowed",
                         hint="carry fewer model weights (--weights), or split the run")
    for old in out.glob("esdistill-return.tar.*"):
        old.unlink()
    step = int(part_mb * 2**20)
    parts = []
    for n, start in enumerate(range(0, len(data), step)):
        part = out / f"esdistill-return.tar.{n:02d}"
        part.write_bytes(data[start : start + step])
        parts.append(part.name)
    manifest = {"format": FORMAT, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "parts": parts,
                "folders": [arc for arc, _, _ in folders], "made": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (out / "esdistill-return.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def import_return(folder: Path, workdir: Path) -> dict[str, Any]:
    """Unpack what :func:`pack` wrote into ``workdir``'s cache (checksum verified, paths confined to the
    offline stages' folders, float16 weights upcast to float32).

    Everything is unpacked and upcast in a temporary folder inside ``workdir`` first; then each stage's folder is
    moved into the cache with one rename. An interrupted import leaves each stage as it was or complete — never a
    ``done.json`` next to truncated vectors or half-upcast weights — and the temporary folder is removed."""
    folder = Path(folder)
    manifest_path = folder / "esdistill-return.json"
    if not manifest_path.exists():
        raise InputError(f"{folder} holds no esdistill-return.json", hint="point at the folder `bundle pack` wrote")
    manifest = json.loads(manifest_path.read_text())
    missing = [p for p in manifest["parts"] if not (folder / p).exists()]
    if missing:
        raise InputError(f"{folder}: parts missing: {', '.join(missing)}")
    data = b"".join((folder / p).read_bytes() for p in manifest["parts"])
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise InputError(f"{folder}: the parts do not add up to what was packed (checksum differs)",
                         hint="copy the parts again, all of them, unchanged")
    from .models import make_loadable

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=workdir))  # same file system: the renames are atomic
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                if parts[0] not in OFFLINE_STAGES or ".." in parts or len(parts) < 3 or not m.isfile():
                    raise InputError(f"{folder}: unexpected entry {m.name!r} in the return", hint="it was not made by "
                                     "`esdistill bundle pack`")
            tar.extractall(staging, filter="data")
        arcs = sorted({"/".join(Path(m.name).parts[:2]) for m in members})  # stage/key
        upcast = 0
        for arc in arcs:
            for mark in (staging / arc).rglob(FP16_MARK):
                from_fp16(mark.parent)
                make_loadable(mark.parent)  # saved by another sentence-transformers, perhaps
                upcast += 1
        for arc in arcs:  # each stage complete, or not there: one rename
            dst = workdir / arc
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():  # an earlier or partial folder of the same key: replaced whole
                dst.rename(staging / f".replaced-{arc.replace('/', '-')}")
            (staging / arc).rename(dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"folders": manifest["folders"], "bytes": manifest["bytes"], "models_upcast": upcast}
