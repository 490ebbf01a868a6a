"""The full profile on a GPU machine that cannot reach the cluster (SciFact, and NFCorpus at the same size),
in three steps — the product's own bundle round trip (`esdistill bundle …`), timed and measured:

    .venv/bin/python bench/gpu.py prepare                    # here, with the cluster: .gpu/ (bundles, wheels)
    python3 bench/gpu.py device --out "$OUT"                 # on the GPU machine, with its own Python stack
    .venv/bin/python bench/gpu.py finish --back DIR          # here: import, deploy, evaluate, bench/results/…
    .venv/bin/python bench/gpu.py dry-run [--device-python P]  # all three on this CPU on a slice

The device step runs every model stage of each bundle (`Project.run_offline`: teacher fit and scores, the
student, the judgments-only control, the corpus and test-query vectors, the pipeline's rankings of the test
queries), then measures, one query at a time, the cross-encoder rescoring BM25's top-100 against the student's
query encoding, and teacher scoring / corpus embedding throughput against the best batch size (bf16), and packs
what comes back: SciFact's student weights (float16) and every dataset's vectors, scores and rankings. The GPU
machine has torch 2.11 / sentence-transformers 6 / transformers 5 and lacks pydantic, datasets and the
Elasticsearch client: `prepare` downloads those as wheels into `.whl/` (carried with `.gpu/`), and the device
command installs them with `pip --target` first.

The device run, as the `device` tool takes it (both folders carried; one run of at most 10 minutes):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 bench/gpu.py device --out "$OUT" 2>&1

(no log file under $OUT: what comes back is 8 files at most — the measurements and each dataset's manifest and
parts; the output's tail comes back with the call.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

ROOT = Path(__file__).resolve().parent.parent
GPU_DIR = ROOT / ".gpu"
WHEELS = ROOT / ".whl"
DATASETS = {"scifact": ROOT / "examples" / "scifact.toml", "nfcorpus": ROOT / "examples" / "nfcorpus.toml"}
#: the packages the GPU machine lacks, at the versions this project pins (pure Python, or built for CPython 3.12)
CARRIED_WHEELS = ["pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0", "typing-inspection==0.4.5",
                  "pydantic-settings==2.16.3", "python-dotenv==1.2.4", "elasticsearch==9.2.1",
                  "elastic-transport==9.4.2", "sniffio==1.3.1", "datasets==5.0.1", "dill==0.4.1",
                  "multiprocess==0.70.19"]
#: the full profile, sized for one GPU run of under 10 minutes with both datasets
GPU_OVERRIDES = {"teacher": {"batch_size": 256}, "deploy": {"encode_batch_size": 256},
                 "evaluate": {"systems": ["bm25", "zero_shot", "pipeline", "student", "judgments", "hybrid"]}}
#: NFCorpus at a size that fits the same device run as SciFact: 800 of its 2,590 training queries (≤ 4 positives
#: each, examples/nfcorpus.toml), 3 folds — about 2,900 listwise rows per fold instead of 9,400
DATASET_OVERRIDES = {"nfcorpus": {"data": {"max_train_queries": 800}, "teacher": {"fit": {"folds": 3}},
                                  # its target is student >= pipeline > BM25: no control, no zero-shot baseline
                                  "evaluate": {"systems": ["bm25", "pipeline", "student", "hybrid"]}}}
#: a slice that runs the same steps on a CPU in minutes (dry run)
SLICE = {"data": {"max_train_queries": 40, "max_test_queries": 20, "max_corpus_docs": 400, "pseudo_queries": 10},
         "candidates": {"k": 20}, "evaluate": {"rerank_depth": 20},
         "teacher": {"fit": {"folds": 2, "epochs": 1.0, "max_length": 64}, "max_length": 64, "batch_size": 32},
         "train": {"epochs": 1.0, "max_length": 64, "batch_size": 16}, "deploy": {"encode_batch_size": 32}}
#: what comes back, within 8 files and 64 MiB: SciFact's student weights (float16, 43 MiB), the vectors of the
#: models whose weights stay away (the zero-shot base is embedded here: this side has it), scores and rankings
BACK = {"scifact": {"weights": ("student",), "vectors": ("student", "judgments"), "budget_mb": 54.0},
        "nfcorpus": {"weights": (), "vectors": ("student",), "budget_mb": 9.0}}

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def _env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not os.environ.get("ESDISTILL_VERBOSE"):
        from esdistill.console import quiet_libraries

        quiet_libraries()


def gpu_config(dataset: str, workdir: Path, dry_run: bool):
    """The one config both sides use: the dataset's example config, full profile, GPU sizes (a slice for a dry
    run). Both sides must compute the same stage keys, so this is the only place it is made."""
    from esdistill.config import _deep_merge, load_config

    over = _deep_merge(GPU_OVERRIDES, DATASET_OVERRIDES.get(dataset, {}))
    if dry_run:  # its own index names: a slice must never replace the real run's BM25 index on a shared cluster
        over = _deep_merge(over, _deep_merge(SLICE, {"data": {"name": f"{dataset}-dry-run"}}))
    return load_config(DATASETS[dataset], "full", workdir=str(workdir), **over)


def _mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.exists() else 0.0


@app.command()
def wheels(python_version: str = "3.12") -> None:
    """Download the carried wheels for the GPU machine's Python into .whl/ (PyPI must be reachable)."""
    WHEELS.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "-d", str(WHEELS)]
    for n in (17, 27, 28, 34):
        cmd += ["--platform", f"manylinux_2_{n}_x86_64"]
    subprocess.run(cmd + ["--platform", "manylinux2014_x86_64", *CARRIED_WHEELS], check=True)
    print(f"wheels: {len(list(WHEELS.glob('*.whl')))} in {WHEELS} ({_mib(WHEELS):.1f} MiB)")


@app.command()
def prepare(datasets: str = "scifact,nfcorpus", dry_run: bool = False,
            out: Annotated[Path, typer.Option(help="where the bundles go")] = GPU_DIR,
            workdir: Annotated[Path, typer.Option(help="the runs' cache folders")] = ROOT / ".esdistill-gpu") -> None:
    """Here, with the cluster: one bundle per dataset (the base model carried once, as float16) and the wheels."""
    _env()
    from esdistill.bundle import export
    from esdistill.cluster import LocalCluster
    from esdistill.pipeline import Project

    if not LocalCluster().status().running and not os.environ.get("ESDISTILL_ES_URL"):
        LocalCluster().start()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for n, name in enumerate(datasets.split(",")):
        cfg = gpu_config(name, workdir / name, dry_run)
        info = export(Project(cfg), out / name, models=["minilm"] if n == 0 else [])
        print(f"bundle {name}: {info['bytes'] / 2**20:.1f} MiB, {info['facts']['docs']} documents, {info['queries']}")
    first = out / datasets.split(",")[0] / "bundle.json"
    shared = json.loads(first.read_text())["models"]
    for name in datasets.split(",")[1:]:  # the other bundles point at the first one's copy of the model
        meta = json.loads((out / name / "bundle.json").read_text())
        meta["models"] = {m: {**v, "path": f"../{datasets.split(',')[0]}/{v['path']}"} for m, v in shared.items()}
        (out / name / "bundle.json").write_text(json.dumps(meta, indent=2))
    if not WHEELS.exists() or not list(WHEELS.glob("*.whl")):
        wheels()
    total = _mib(out) + _mib(WHEELS) + _mib_tracked()
    print(f"carried: .gpu {_mib(out):.1f} MiB + .whl {_mib(WHEELS):.1f} MiB + tree {_mib_tracked():.1f} MiB "
          f"= {total:.1f} MiB of the 64 MiB that may travel")
    if total > 63.5:
        raise SystemExit("over the 64 MiB a device run may carry: drop a dataset or the slice")


def _mib_tracked() -> float:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).exists()) / 2**20


# --------------------------------------------------------------------------------------------- the device
def _latency(project, queries: int = 100) -> dict:
    """One query at a time on this machine: the cross-encoder rescoring BM25's top-``rerank_depth`` (texts from
    the recorded BM25 answers) vs the student's query encoding. bf16 autocast on a GPU, synchronised timing."""
    import numpy as np
    import pandas as pd
    import torch

    from esdistill.embed import inference_context
    from esdistill.models import load_bi_encoder, load_cross_encoder

    cuda = torch.cuda.is_available()
    tc = project._test_candidates_cache()
    head = pd.read_parquet(tc.path("candidates.parquet"))
    head = head[head["head"]]
    qs = project.eval_queries()
    qids = sorted(qs)[:queries]
    ce = load_cross_encoder(project.teacher_model(), max_length=project.cfg.teacher.max_length)
    bi = load_bi_encoder(project.student_path(), max_length=project.cfg.train.max_length)

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with inference_context():
            fn()
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3

    by_q = {q: g for q, g in head.groupby("qid")}
    pairs = {q: [(qs[q], d.full_text) for d in project.docs(list(by_q[q].docid)).values()] for q in qids if q in by_q}
    first = next(iter(pairs))
    for _ in range(3):  # warm-up: kernels, allocator
        timed(lambda: ce.predict(pairs[first], batch_size=len(pairs[first]), show_progress_bar=False))
        timed(lambda: bi.encode(qs[first], show_progress_bar=False))
    rerank = [timed(lambda q=q: ce.predict(pairs[q], batch_size=len(pairs[q]), show_progress_bar=False))
              for q in pairs]
    encode = [timed(lambda q=q: bi.encode(qs[q], show_progress_bar=False)) for q in pairs]
    p = lambda xs, n: float(np.percentile(xs, n))  # noqa: E731
    return {"queries": len(pairs), "depth": int(np.median([len(v) for v in pairs.values()])),
            "max_length": project.cfg.teacher.max_length,
            "rerank_ms": {"p50": p(rerank, 50), "p95": p(rerank, 95)},
            "student_encode_ms": {"p50": p(encode, 50), "p95": p(encode, 95)},
            "speedup_p50": p(rerank, 50) / p(encode, 50)}


def _throughput(project, n: int = 4096) -> dict:
    """Teacher scoring (pairs/s) and corpus embedding (docs/s): the stages' own batch size vs the best of a
    range, same inputs, bf16 autocast on a GPU."""
    import pandas as pd
    import torch

    from esdistill.embed import inference_context
    from esdistill.models import load_bi_encoder, load_cross_encoder

    cuda = torch.cuda.is_available()
    scores = pd.read_parquet(project._teacher_cache().path("scores.parquet")).head(n)
    texts = project.docs(list(scores.docid.unique()))
    pairs = [(project.train_queries[q], texts[d].full_text) for q, d in zip(scores.qid, scores.docid, strict=True)]
    docs = [d.full_text for d in list(project.dataset.corpus.values())[:n]]
    ce = load_cross_encoder(project.teacher_model(), max_length=project.cfg.teacher.max_length)
    bi = load_bi_encoder(project.student_path(), max_length=project.cfg.deploy.effective_max_length(project.cfg.train))
    sizes = [16, 32, 64, 128, 256, 512, 1024] if cuda else [8, 16, 32]

    def rate(fn, items, bs) -> float:
        with inference_context():
            fn(items[: bs * 2], bs)  # warm-up
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(items, bs)
            if cuda:
                torch.cuda.synchronize()
        return len(items) / (time.perf_counter() - t0)

    def score(items, bs):
        ce.predict(items, batch_size=bs, show_progress_bar=False)

    def embed(items, bs):
        bi.encode(items, batch_size=bs, show_progress_bar=False)

    out = {}
    for what, fn, items, used in (("teacher_scoring_pairs_per_s", score, pairs, project.cfg.teacher.batch_size),
                                  ("embedding_docs_per_s", embed, docs, project.cfg.deploy.encode_batch_size)):
        by_size = {str(bs): rate(fn, items, bs) for bs in sorted(set(sizes) | {used})}
        best = max(by_size, key=by_size.get)
        out[what] = {"by_batch": by_size, "used_batch": used, "best_batch": int(best),
                     "used_share_of_best": by_size[str(used)] / by_size[best], "items": len(items)}
    return out


@app.command()
def device(out: Annotated[Path, typer.Option(help="where what comes back goes ($OUT)")],
           datasets: str = "scifact,nfcorpus", gpu_dir: Path = GPU_DIR,
           budget_s: Annotated[float, typer.Option(help="start no dataset after this many seconds")] = 420.0,
           workdir: Path = Path("/tmp/esdistill-gpu"),
           measure_n: Annotated[int, typer.Option(help="pairs / documents of the throughput measurement")] = 4096,
           latency_queries: Annotated[int, typer.Option(help="test queries timed one at a time")] = 100) -> None:
    """On the GPU machine: every model stage of each bundle, the measurements, and the packed results."""
    _env()
    import platform

    import sentence_transformers
    import torch
    import transformers

    from esdistill.bundle import Bundle, pack
    from esdistill.errors import InputError
    from esdistill.pipeline import Project

    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else
                    f"{os.cpu_count()} CPU cores", "python": platform.python_version(), "torch": torch.__version__,
                    "sentence_transformers": sentence_transformers.__version__,
                    "transformers": transformers.__version__, "datasets": {}}
    for name in datasets.split(","):
        elapsed = time.perf_counter() - t_start
        if elapsed > budget_s:
            record["datasets"][name] = {"skipped": f"{elapsed:.0f} s had passed (budget {budget_s:.0f} s)"}
            continue
        bundle = Bundle(gpu_dir / name)
        project = Project(bundle.config(workdir / name), bundle=bundle)
        t0 = time.perf_counter()
        done = project.run_offline()
        from esdistill.models import bf16_available

        rec = {"stage_seconds": {k: v.get("seconds") for k, v in done.items()},
               "offline_seconds": time.perf_counter() - t0, "bf16": bf16_available()}
        rec["latency"] = _latency(project, latency_queries)
        rec["throughput"] = _throughput(project, measure_n)
        back = BACK[name]
        try:
            m = pack(project, out / name, **back)
        except InputError as e:  # over its share of the 64 MiB: the weights stay, their vectors come back
            rec["pack_note"] = f"{e.message}; packed vectors instead of weights"
            m = pack(project, out / name, weights=(), vectors=tuple(set(back["vectors"]) | set(back["weights"])),
                     budget_mb=back["budget_mb"])
        rec["packed_mib"] = m["bytes"] / 2**20
        rec["packed_parts"] = len(m["parts"])
        record["datasets"][name] = rec
        (out / "gpu-measurements.json").write_text(json.dumps(record, indent=2, default=str))
        print(json.dumps({name: {k: v for k, v in rec.items() if k != "throughput"}}, default=str))
    record["seconds"] = time.perf_counter() - t_start
    (out / "gpu-measurements.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"device: done in {record['seconds']:.0f} s")


# --------------------------------------------------------------------------------------------- back here
@app.command()
def finish(back: Annotated[Path, typer.Option(help="the device run's $OUT, fetched here")],
           datasets: str = "scifact,nfcorpus", dry_run: bool = False,
           results: Annotated[Path, typer.Option(help="where the result files go")] = ROOT / "bench" / "results",
           workdir: Path = ROOT / ".esdistill-gpu") -> None:
    """Here: import each dataset's return, deploy from its vectors, evaluate every system, write the result
    files with the GPU's measurements and the targets."""
    _env()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import plot, table

    from esdistill.bundle import import_return
    from esdistill.jsonutil import dumps
    from esdistill.pipeline import Project, environment
    from esdistill.redact import redact

    gpu = json.loads((back / "gpu-measurements.json").read_text())
    label = "cpu-dry-run" if dry_run else _gpu_label(gpu["device"])
    for name in datasets.split(","):
        if "skipped" in gpu["datasets"].get(name, {"skipped": "not run"}):
            print(f"{name}: skipped on the device ({gpu['datasets'].get(name)})")
            continue
        cfg = gpu_config(name, workdir / name, dry_run)
        import_return(back / name, Path(cfg.workdir))
        project = Project(cfg)
        missed = [c.stage for c in (project._teacher_cache(), project._train_cache(), project._system_cache("pipeline"))
                  if not c.done]
        if missed:  # the two sides computed different keys: nothing of the device run would be used
            raise SystemExit(f"{name}: after the import, {missed} are not cache hits here: the device side computed "
                             "other stage keys (compare the done.json inputs of both sides)")
        report = project.run()
        data = json.loads(Path(report["json"]).read_text())
        summary = {k: data[k] for k in ("systems", "p_vs_bm25", "p_vs_pipeline", "queries")}
        dev = gpu["datasets"][name]
        targets = _targets(name, summary, dev)
        md = (f"## {name} — full profile — model stages on {gpu['device']}, Elasticsearch here\n\n" + table(summary)
              + "\n" + _gpu_md(dev, gpu["device"]) + "\n" + _targets_md(targets))
        stem = f"{name}-full-{label}"
        results.mkdir(parents=True, exist_ok=True)
        (results / f"{stem}.md").write_text(md)
        (results / f"{stem}.json").write_text(dumps(redact({
            "command": " ".join(["bench/gpu.py", *sys.argv[1:]]), "dataset": name, "profile": "full",
            "device": gpu, "evaluated_on": environment(), "summary": summary, "targets": targets,
            "config": json.loads(cfg.model_dump_json()), "report": report["json"]}), indent=2))
        plot(summary, results / f"{stem}.png", f"{name} full profile (model stages on {gpu['device']})")
        print(md)


def _gpu_label(device: str) -> str:
    import re

    m = re.search(r"([A-Z]\d{2,4})", device)
    return (m.group(1) if m else re.sub(r"\W+", "-", device)).lower()


def _gpu_md(dev: dict, device: str) -> str:
    lat, thr = dev["latency"], dev["throughput"]
    precision = "bf16" if dev.get("bf16") else "float32"
    lines = [f"On {device}, one query at a time ({precision}, {lat['queries']} test queries): the cross-encoder rescoring "
             f"BM25's top-{lat['depth']} at {lat['max_length']} tokens takes {lat['rerank_ms']['p50']:.1f} ms p50 "
             f"({lat['rerank_ms']['p95']:.1f} p95); the student encodes a query in "
             f"{lat['student_encode_ms']['p50']:.1f} ms p50: {lat['speedup_p50']:.1f}× faster.", ""]
    for what, t in thr.items():
        lines.append(f"- {what.replace('_', ' ')}: batch {t['used_batch']} gives {t['by_batch'][str(t['used_batch'])]:.0f}"
                     f"/s, {t['used_share_of_best']:.0%} of the best batch ({t['best_batch']})")
    lines.append("\n| offline stage | seconds |\n|---|---|")
    lines += [f"| {k} | {v:.1f} |" for k, v in dev["stage_seconds"].items() if v is not None]
    return "\n".join(lines) + "\n"


def _targets(name: str, summary: dict, dev: dict) -> dict:
    s, pb, pp = summary["systems"], summary.get("p_vs_bm25", {}), summary.get("p_vs_pipeline", {})
    ndcg = {k: v["ndcg@10"] for k, v in s.items()}
    out = {}
    if name == "scifact":
        out["pipeline >= 0.72"] = {"met": ndcg["pipeline"] >= 0.72, "value": ndcg["pipeline"]}
        out["student >= pipeline"] = {"met": ndcg["student"] >= ndcg["pipeline"], "student": ndcg["student"],
                                      "pipeline": ndcg["pipeline"], "p": pp.get("student", {}).get("ndcg@10")}
        p_control = _paired_p(summary, "student", "judgments")
        out["student >= judgments-only control"] = {"met": ndcg["student"] >= ndcg["judgments"],
                                                    "student": ndcg["student"], "control": ndcg["judgments"],
                                                    "p": p_control}
        share = s["student"].get("share_of_gain")
        out["share of gain >= 100%"] = {"met": share is not None and share == share and share >= 1.0, "value": share}
        out["hybrid above every other system"] = {"met": all(ndcg["hybrid"] > v for k, v in ndcg.items()
                                                             if k != "hybrid"), "hybrid": ndcg["hybrid"]}
        out["GPU: student query path >= 5x faster"] = {"met": dev["latency"]["speedup_p50"] >= 5,
                                                      "value": dev["latency"]["speedup_p50"]}
        for what, t in dev["throughput"].items():
            out[f"GPU: {what} >= 80% of best batch"] = {"met": t["used_share_of_best"] >= 0.8,
                                                        "value": t["used_share_of_best"]}
    else:
        out["student >= pipeline > BM25"] = {"met": ndcg["student"] >= ndcg["pipeline"] > ndcg["bm25"],
                                            **{k: ndcg[k] for k in ("student", "pipeline", "bm25")},
                                            "p_pipeline_vs_bm25": pb.get("pipeline", {}).get("ndcg@10")}
    return out


def _paired_p(summary: dict, a: str, b: str) -> float | None:
    from scipy.stats import ttest_rel

    x, y = summary["systems"][a]["per_query"]["ndcg@10"], summary["systems"][b]["per_query"]["ndcg@10"]
    return float(ttest_rel(x, y).pvalue) if x != y else None


def _targets_md(targets: dict) -> str:
    lines = ["| target | met | numbers |", "|---|---|---|"]
    for t, v in targets.items():
        nums = ", ".join(f"{k} {x:.3f}" if isinstance(x, float) else f"{k} {x}" for k, x in v.items() if k != "met")
        lines.append(f"| {t} | {'yes' if v['met'] else 'no'} | {nums} |")
    return "\n".join(lines) + "\n"


@app.command("dry-run")
def dry_run(device_python: Annotated[str | None, typer.Option(help="the Python that runs the device step (e.g. "
                                                                   "a venv with the GPU machine's versions)")] = None,
            datasets: str = "scifact,nfcorpus") -> None:
    """All three steps on this CPU on a slice: prepare, the device step (in --device-python, with the carried
    wheels installed as on the device), finish. Writes into /tmp, not bench/results."""
    tmp = Path("/tmp/esdistill-gpu-dry-run")
    shutil.rmtree(tmp, ignore_errors=True)
    prepare(datasets=datasets, dry_run=True, out=tmp / "gpu", workdir=tmp / "here")
    py = device_python or sys.executable
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if device_python:
        site = tmp / "site"
        subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target",
                        str(site), *map(str, WHEELS.glob("*.whl"))], check=True)
        env["PYTHONPATH"] = f"{site}:{ROOT}"
    t0 = time.perf_counter()
    subprocess.run([py, str(Path(__file__).resolve()), "device", "--out", str(tmp / "out"), "--datasets", datasets,
                    "--gpu-dir", str(tmp / "gpu"), "--workdir", str(tmp / "away"), "--budget-s", "100000",
                    "--measure-n", "128", "--latency-queries", "10"],
                   check=True, env=env, cwd=ROOT)
    print(f"device step: {time.perf_counter() - t0:.0f} s")
    finish(back=tmp / "out", datasets=datasets, dry_run=True, results=tmp / "results", workdir=tmp / "here")


if __name__ == "__main__":
    app()
