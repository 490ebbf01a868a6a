"""What the bench scripts share: their options, the project they measure, the hardware label, the result file."""

from __future__ import annotations

import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

ROOT = Path(__file__).resolve().parent.parent

# The options more than one bench script takes, declared once: a script imports these and declares only its own.
# Defaults stay at each script's parameter (they differ between scripts); the DEFAULT_* below are the common ones.
ProfileOpt = Annotated[str, typer.Option(help="quick | full")]
ConfigOpt = Annotated[Path, typer.Option(help="the dataset's config")]
#: a cache folder of the bench's own (default ``DEFAULT_WORKDIR``)
WorkdirOpt = Annotated[Path, typer.Option(help="the bench run's cache folder")]
#: ``None``: the config's own ``workdir`` (the cache the config's deploy lives in)
ConfigWorkdirOpt = Annotated[Path | None, typer.Option(help="cache folder (default: the config's)")]
OutOpt = Annotated[Path, typer.Option(help="folder for the result files")]
DepthOpt = Annotated[int, typer.Option(help="BM25 candidates reranked per query")]
MaxLengthOpt = Annotated[int, typer.Option(help="tokens per pair / document")]
BatchSizeOpt = Annotated[int, typer.Option(help="pairs / texts per model batch")]
RoundsOpt = Annotated[int, typer.Option(help="passes over the test queries")]
PairsOpt = Annotated[int, typer.Option("--pairs", help="query-document pairs scored by the teacher")]
DocsOpt = Annotated[int, typer.Option("--docs", help="documents embedded")]
DEFAULT_CONFIG = ROOT / "examples" / "scifact.toml"
DEFAULT_WORKDIR = ROOT / ".esdistill-bench"
DEFAULT_OUT = ROOT / "bench" / "results"


def prepare_env() -> None:
    """Offline models, and the same quiet console as the CLI (``ESDISTILL_VERBOSE=1`` shows the libraries')."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get("ESDISTILL_VERBOSE", "").lower() not in ("1", "true", "yes"):
        from esdistill.console import quiet_libraries

        quiet_libraries()


def open_project(config: Path, profile: str, workdir: Path | None = None):
    """The :class:`esdistill.pipeline.Project` of a bench run (its cache in ``workdir``)."""
    prepare_env()
    from esdistill import load_config
    from esdistill.pipeline import Project

    overrides = {"workdir": str(workdir.resolve())} if workdir else {}
    return Project(load_config(config, profile, **overrides))


def ensure_cluster(cfg) -> None:
    """Start the local test build when the run names no cluster (``cluster.url`` nor ``ESDISTILL_ES_URL``) and it
    is not running already."""
    if cfg.cluster_settings().url:
        return
    from esdistill.cluster import LocalCluster

    local = LocalCluster()
    if not local.status().running:
        local.start()


def hardware_label() -> str:
    """``h100``-style for a GPU, else ``<n>cpu``: the last part of a result file's name."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        m = re.search(r"([A-Z]\d{2,4})", name)
        return (m.group(1) if m else re.sub(r"\W+", "-", name)).lower()
    return f"{os.cpu_count()}cpu"


def hardware() -> dict[str, Any]:
    import torch

    info = Path("/proc/cpuinfo")
    cpu = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if info.exists() else platform.processor()
    mem = None
    if Path("/proc/meminfo").exists():
        mem = round(int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) / 2**20, 1)
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "memory_gib": mem,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "label": hardware_label()}


def write_result(out: Path, name: str, payload: dict[str, Any]) -> Path:
    """``<out>/<name>.json`` with the payload, the hardware and the exact command that produced it; the user info of
    every URL in it (``https://user:password@host``) shows as ``**********``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    script = Path(sys.argv[0]).name
    record = {**payload, "hardware": payload.get("hardware") or hardware(),
              "command": " ".join([f"bench/{script}", *sys.argv[1:]])}
    from esdistill.jsonutil import dumps
    from esdistill.redact import redact

    # strict JSON: NaN (an undefined share, identical runs) -> null; credentials in a URL (config, command) redacted
    path.write_text(dumps(redact(record), indent=2))
    print(f"written: {path}")
    return path


def pipeline_heads(workdir: Path | str, test_queries) -> dict[str, dict[str, float]]:
    """The pipeline's reranked head of each test query (its own candidates and scores), from the newest pipeline
    run in ``workdir`` over these test queries (a cache can hold another dataset's runs too)."""
    done = sorted((json.loads(f.read_text()) | {"path": f} for f in Path(workdir).glob("evaluate-system/*/done.json")),
                  key=lambda r: r["finished"])
    for r in reversed([r for r in done if r.get("system") == "pipeline"]):
        run = json.loads((r["path"].parent / "run.json").read_text())["run"]
        if set(run) <= set(test_queries):
            depth = r["inputs"]["depth"]
            return {q: dict(sorted(s.items(), key=lambda x: -x[1])[:depth]) for q, s in run.items()}
    raise SystemExit(f"no pipeline run over these test queries in {workdir}: run bench/run.py or the demo there first")


def exact_search_measures(query_vectors, doc_vectors, query_ids: list[str], doc_ids: list[str],
                          heads: dict[str, dict[str, float]], qrels) -> dict[str, Any]:
    """Test queries (``query_vectors``, in ``query_ids`` order) searched exactly over the whole corpus
    (``doc_vectors``, in ``doc_ids`` order), unit vectors: agreement with the pipeline on its own candidates
    (``heads``, :func:`pipeline_heads`) and NDCG@10 of the top 100 against ``qrels``."""
    import numpy as np

    from esdistill.agreement import agreement
    from esdistill.evaluate import metrics

    sims = np.asarray(query_vectors) @ np.asarray(doc_vectors).T
    row = {d: i for i, d in enumerate(doc_ids)}
    run, head_scores = {}, {}
    for qi, q in enumerate(query_ids):
        top = np.argsort(-sims[qi])[:100]
        run[q] = {doc_ids[j]: float(sims[qi, j]) for j in top}
        if q in heads:
            head_scores[q] = {d: float(sims[qi, row[d]]) for d in heads[q] if d in row}
    return {"test_agreement": agreement(heads, head_scores), "test_ndcg@10": metrics(qrels, run)["ndcg@10"]}
