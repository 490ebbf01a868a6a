"""Does the distilling loss alone move the student toward its teacher? (issue 20)

    .venv/bin/python bench/distill_probe.py --workdir /path/to/a/bench/run --learning-rate 2e-5 --learning-rate 1e-4

The log-only student (teacher labels only: no judged pair, no MNRL) is the clean probe of distillation. For each
learning rate it trains on the cached candidates and teacher scores of ``--workdir`` (a ``bench/run.py`` cache:
nothing but the student is computed) and reads, from its train record, the dev slice's agreement with the teacher
before and after training (NDCG@10 against the teacher's order, overlap@10, RBO, bootstrap 95% intervals).
Prints a table and writes ``bench/results/distill-probe-<dataset>-<profile>-<hardware>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_CONFIG, DEFAULT_OUT, ConfigOpt, ConfigWorkdirOpt, OutOpt, ProfileOpt, hardware_label, prepare_env  # noqa: E402

METRICS = ("ndcg@10", "overlap@10", "rbo")


def main(
    profile: ProfileOpt = "quick",
    config: ConfigOpt = DEFAULT_CONFIG,
    out: OutOpt = DEFAULT_OUT,
    workdir: ConfigWorkdirOpt = None,
    learning_rate: Annotated[list[float] | None, typer.Option(help="learning rates to probe (repeat)")] = None,
):
    prepare_env()
    from esdistill import load_config
    from esdistill.pipeline import Project

    rows = []
    for lr in learning_rate or [2e-5]:
        overrides: dict = {"train": {"learning_rate": lr}}
        if workdir:
            overrides["workdir"] = str(workdir.resolve())
        cfg = load_config(config, profile, **overrides)
        rec = Project(cfg).train_log_only()
        before, after = rec["agreement_before"], rec["agreement_after"]
        rows.append({"learning_rate": lr, "steps": rec["steps"], "dev_queries": rec.get("dev_queries"),
                     **{m: {"before": before.get(m), "after": after.get(m), "after_ci95": after.get(f"{m}_ci95")}
                        for m in METRICS}})
    print("| learning rate | steps | " + " | ".join(f"{m} before → after [95% CI]" for m in METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for r in rows:
        cells = [f"{r[m]['before']:.3f} → {r[m]['after']:.3f} [{r[m]['after_ci95'][0]:.3f}, "
                 f"{r[m]['after_ci95'][1]:.3f}]" for m in METRICS]
        print(f"| {r['learning_rate']:g} | {r['steps']} | " + " | ".join(cells) + " |")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"distill-probe-{cfg.data.name}-{profile}-{hardware_label()}.json"
    path.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    typer.run(main)
