"""Concurrent load on the deployed demo: 8 workers, 30 s each for student kNN, hybrid and BM25.

    .venv/bin/python bench/load.py [--config examples/scifact.toml] [--workers 8] [--seconds 30]

Needs a finished `esdistill run` (deployed student). Prints a table; writes bench/results/load-<host>.json.
"""

import argparse
import os
import sys
from pathlib import Path

from esdistill import load_config
from esdistill.jsonutil import dumps
from esdistill.pipeline import Project
from esdistill.search import run_load

ap = argparse.ArgumentParser()
ap.add_argument("--config", default="examples/scifact.toml")
ap.add_argument("--profile", default="quick")
ap.add_argument("--workers", type=int, default=8)
ap.add_argument("--seconds", type=float, default=30.0)
args = ap.parse_args()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
project = Project(load_config(args.config, args.profile))
queries = list(project.dataset.test_queries.values())
builders = project.systems(served=True)
rows = [run_load(builders[name](), queries, args.workers, args.seconds) for name in ("student", "hybrid", "bm25")]
print("| system | workers | seconds | queries | errors | QPS | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['system']} | {r['workers']} | {r['seconds']:.1f} | {r['queries']} | {r['errors']} | {r['qps']:.1f} | "
          f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |")
out = Path("bench/results") / f"load-{os.cpu_count()}cpu.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(dumps({"rows": rows, "cpu_count": os.cpu_count(), "command": " ".join(["bench/load.py", *sys.argv[1:]])}, indent=2))
print(f"written: {out}")
