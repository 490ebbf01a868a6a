"""Per-query latency of the student's query encoders, one run, one machine: Python with PyTorch
(sentence-transformers), Python with the exported encoder (ONNX Runtime + tokenizers, fp32 and int8), Node.js
(examples/node) and Java (examples/java) with the same exported files.

    .venv/bin/python bench/encoders.py [--config examples/scifact.toml] [--workdir .esdistill-bench]

Needs a finished bench run whose student is deployed (the export reads the deploy's key from the cluster) and
the clients built (scripts/test-setup.sh). Every test query is encoded one at a time, ``--rounds`` times, after a
warm-up, each encoder with ``--threads`` intra-op threads (an application server encodes many queries at once,
one thread each). Prints a table; writes ``bench/results/encoders-<dataset>-<hardware>.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, DEFAULT_WORKDIR, ROOT, ConfigOpt, OutOpt, ProfileOpt, RoundsOpt, WorkdirOpt, hardware,
    open_project, write_result,
)


def _stats(name: str, times: list[float], threads: int) -> dict:
    import numpy as np

    a = np.sort(np.asarray(times))
    return {"encoder": name, "n": len(a), "threads": threads, "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def _time(encode, queries: list[str], rounds: int) -> list[float]:
    for q in queries[:5]:
        encode(q)
    times = []
    for _ in range(rounds):
        for q in queries:
            t0 = time.perf_counter()
            encode(q)
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def main(
    profile: ProfileOpt = "quick",
    config: ConfigOpt = DEFAULT_CONFIG,
    workdir: WorkdirOpt = DEFAULT_WORKDIR,
    out: OutOpt = DEFAULT_OUT,
    rounds: RoundsOpt = 3,
    threads: Annotated[int, typer.Option(help="intra-op threads of every encoder")] = 1,
):
    project = open_project(config, profile, workdir)
    import numpy as np
    import onnxruntime as ort
    import torch
    from tokenizers import Tokenizer

    from esdistill.models import load_bi_encoder

    folder = project.workdir / "encoders" / project._deploy_key("student")
    manifest = project.export_encoder(folder)
    queries = list(project.eval_queries().values())
    qfile = folder / "bench-queries.txt"
    qfile.write_text("\n".join(q.replace("\n", " ") for q in queries) + "\n")
    rows = []

    torch.set_num_threads(threads)
    student = load_bi_encoder(project.student_path(), max_length=project.cfg.train.max_length, device="cpu")
    rows.append(_stats("python torch (sentence-transformers)", _time(
        lambda q: student.encode(q, normalize_embeddings=True, show_progress_bar=False), queries, rounds), threads))

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for f, label in (("model.onnx", "python onnx"), ("model_int8.onnx", "python onnx-int8")):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        sess = ort.InferenceSession(str(folder / f), so, providers=["CPUExecutionProvider"])

        def encode(q, sess=sess):
            enc = tok.encode(q)
            arrays = {"input_ids": enc.ids, "attention_mask": enc.attention_mask, "token_type_ids": enc.type_ids}
            return sess.run(None, {n: np.asarray([arrays[n]], dtype=np.int64) for n in manifest["inputs"]})[0]

        rows.append(_stats(f"{label} (exported; tokenizers + onnxruntime)", _time(encode, queries, rounds), threads))

    clients = {"node": (["node", "search.mjs"], ROOT / "examples" / "node"),
               "java": (["java", "-cp", "target/classes:target/dependency/*", "esdistill.Search"],
                        ROOT / "examples" / "java")}
    for lang, (cmd, cwd) in clients.items():
        for int8 in (False, True):
            proc = subprocess.run([*cmd, "--encoder", str(folder), "--queries-file", str(qfile), "--bench-encode",
                                   str(rounds), "--threads", str(threads), *(["--int8"] if int8 else [])],
                                  cwd=cwd, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                raise SystemExit(f"{lang} client failed: {proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append({**r, "encoder": f"{r['encoder']} (examples/{lang})", "threads": threads})

    print(f"| query encoder ({len(queries)} queries × {rounds}, {threads} thread) | p50 ms | p99 ms | mean ms |\n"
          "|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['mean_ms']:.2f} |")
    hw = hardware()
    write_result(out, f"encoders-{project.cfg.data.name}-{hw['label']}",
                 {"rows": rows, "queries": len(queries), "rounds": rounds, "deploy_key": manifest["deploy_key"],
                  "max_length": manifest["max_length"], "hardware": hw})


if __name__ == "__main__":
    typer.run(main)
