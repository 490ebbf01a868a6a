"""The deployed indices measured by Rally, Elasticsearch's own benchmark tool: BM25 against the student's kNN.

    python3 -m venv .rally && .rally/bin/pip install esrally      # Rally pins its own client: keep it apart
    .venv/bin/python bench/rally.py [--config examples/scifact.toml] [--clients 8] [--seconds 30]

Needs a finished `esdistill run` (deployed student). Writes the test queries' request bodies — BM25's
``multi_match`` and the student's ``knn`` with the query vector computed here, as an application sends them —
into a copy of the track in ``bench/rally/``, then runs ``esrally race --pipeline=benchmark-only --offline``
against the configured cluster (the served alias for kNN). Rally's clients send bodies only, so its numbers
are the cluster's cost alone (query encoding is ``bench/load.py``'s). Prints throughput and latency per task
and writes ``bench/results/rally-<hardware>.json`` with Rally's CSV report inside.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlparse

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_CONFIG, DEFAULT_OUT, ROOT, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, hardware_label, open_project,
    write_result,
)

TRACK = Path(__file__).resolve().parent / "rally"
KEPT = {"Mean Throughput": "qps", "Median Throughput": "median_qps", "50th percentile latency": "p50_ms",
        "99th percentile latency": "p99_ms", "50th percentile service time": "service_p50_ms",
        "99th percentile service time": "service_p99_ms", "error rate": "error_rate_pct"}


def _esrally(path: str | None) -> str:
    for candidate in (path, str(ROOT / ".rally" / "bin" / "esrally"), shutil.which("esrally")):
        if candidate and Path(candidate).exists():
            return candidate
    raise SystemExit("esrally not found: python3 -m venv .rally && .rally/bin/pip install esrally "
                     "(or --esrally PATH)")


def main(config: ConfigOpt = DEFAULT_CONFIG, profile: ProfileOpt = "quick", workdir: ConfigWorkdirOpt = None,
         clients: Annotated[int, typer.Option(help="Rally clients per task")] = 8,
         seconds: Annotated[int, typer.Option(help="measured time per task (after a 10 s warm-up)")] = 30,
         esrally: Annotated[str | None, typer.Option(help="the esrally executable (default: .rally/bin, PATH)")]
         = None,
         out: OutOpt = DEFAULT_OUT) -> None:
    from esdistill.config import LocalClusterSettings

    project = open_project(config, profile, workdir)
    project.cfg.evaluate.encode_batch = 1  # encoding here is one query at a time, in this process
    systems = project.systems(served=True)
    bm25, student = systems["bm25"](), systems["student"]()
    queries = list(project.eval_queries().values())
    settings = project.cfg.cluster_settings()
    url = settings.url or LocalClusterSettings().url
    parsed = urlparse(url)
    options = [f"use_ssl:{str(parsed.scheme == 'https').lower()}",
               f"verify_certs:{str(settings.verify_certs).lower()}", "timeout:60"]
    if settings.username and settings.password:
        options += [f"basic_auth_user:'{settings.username}'",
                    f"basic_auth_password:'{settings.password.get_secret_value()}'"]
    elif parsed.username:  # https://user:password@host: Rally takes only host:port, so the credentials go here
        options += [f"basic_auth_user:'{unquote(parsed.username)}'",
                    f"basic_auth_password:'{unquote(parsed.password or '')}'"]

    with tempfile.TemporaryDirectory(prefix="esdistill-rally-") as tmp:
        track = Path(tmp) / "track"
        shutil.copytree(TRACK, track, ignore=shutil.ignore_patterns("esrally_any_build.py", "__pycache__"))
        with (track / "queries.jsonl").open("w", encoding="utf-8") as f:
            for q in queries:
                f.write(json.dumps({"bm25": bm25.request(q)["body"], "knn": student.request(q)["body"]}) + "\n")
        params = {"bm25_index": bm25.index, "dense_index": student.index, "queries": "queries.jsonl",
                  "clients": clients, "time_period": seconds}
        report = Path(tmp) / "report.csv"
        exe = _esrally(esrally)  # through the wrapper: the test build answers GET / (Rally's version probe) with 405
        python = Path(exe).with_name("python")
        cmd = [str(python), str(TRACK / "esrally_any_build.py"), "race", f"--track-path={track}",
               "--pipeline=benchmark-only", "--offline",
               f"--target-hosts={parsed.hostname}:{parsed.port or 9200}", f"--client-options={','.join(options)}",
               "--track-params=" + ",".join(f"{k}:{v}" for k, v in params.items()),
               "--report-format=csv", f"--report-file={report}", "--on-error=abort", "--kill-running-processes",
               "--user-tags=tool:esdistill"]
        shown = [c if "client-options" not in c else "--client-options=…" for c in cmd]
        print("running:", " ".join(shown), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not report.exists():
            sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
            raise SystemExit(f"esrally failed (exit {proc.returncode}); its log is ~/.rally/logs/rally.log")
        raw = report.read_text()

    tasks: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(raw.splitlines()):
        metric, task = row.get("Metric", ""), row.get("Task", "")
        if metric in KEPT and task:
            tasks.setdefault(task, {})[KEPT[metric]] = float(row["Value"]) if row["Value"] else None
    print("\n| task | QPS | p50 ms | p99 ms | service p50 ms | service p99 ms | errors % |\n"
          "|---|---|---|---|---|---|---|")
    for task, m in tasks.items():
        print(f"| {task} | {m.get('qps', 0):.1f} | {m.get('p50_ms', 0):.2f} | {m.get('p99_ms', 0):.2f} | "
              f"{m.get('service_p50_ms', 0):.2f} | {m.get('service_p99_ms', 0):.2f} | {m.get('error_rate_pct', 0):g} |")
    write_result(out, f"rally-{hardware_label()}", {
        "tasks": tasks, "clients": clients, "seconds": seconds, "queries": len(queries),
        "indices": {"bm25": bm25.index, "knn": student.index}, "esrally": proc.stdout.splitlines()[-3:],
        "report_csv": raw})


if __name__ == "__main__":
    typer.run(main)
