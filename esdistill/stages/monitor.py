"""``monitor``: the deployed student's agreement with the pipeline on recent queries."""

from __future__ import annotations

from typing import Any

from .. import results as results_mod
from .base import StageWork


class MonitorStage(StageWork):
    """The deployed student watched against the pipeline."""

    def monitor(self, source: str | None = None, index: str | None = None) -> dict[str, Any]:
        """The deployed student's agreement with the pipeline on recent queries (:mod:`esdistill.monitor`): a
        report in ``<workdir>/monitor/``, documents in the results index, ``below`` when under ``min_ndcg``."""
        from .. import monitor as mon

        with self.p.stage("monitor"):
            queries = mon.monitor_queries(self.p, source, index)
            served = self.p.served_deploy()
            report = mon.run_monitor(self.p, queries, self.p.progress)
            report["deploy"] = {"alias": served.alias, "index": served.index, "key": served.key,
                                "model": served.model}
            import uuid

            # time-sortable and unique: two runs in one second neither share files nor overwrite each other's docs
            stamp = f"{report['date'].replace(':', '').replace('-', '')[:15]}-{uuid.uuid4().hex[:6]}"
            md, js = mon.write_report(report, self.p.workdir / "monitor", stamp)
            meta = {"run_id": f"{stamp}-monitor", "evaluate_key": f"monitor-{stamp}-{served.key[:8]}",
                    "dataset": self.cfg.data.name, "profile": self.cfg.profile, "model_id": served.model,
                    "teacher_id": (served.meta.get("pipeline") or {}).get("teacher_id")}
            written = results_mod.write_results(self.p.client, mon.result_docs(report, meta))
            threshold = self.cfg.monitor.min_ndcg
            report.update(markdown=str(md), json=str(js), results_written=written,
                          below=threshold is not None and report["mean"]["ndcg@10"] < threshold)
            print(mon.markdown(report), flush=True)
            self.p.log(f"monitor: {md}; {written} documents in index {results_mod.RESULTS_INDEX}")
            return report
