"""Every cache key of the regression slice (tests/test_regression.py), listed stage by stage: what
``tests/expected/regression-keys.json`` pins, so a refactor that changes how a key is made (and so would make
users' caches invalid) fails ``tests/test_keys.py``.

Keys that read only the config and the data files are computed without a cluster (``offline``); those that chain
on BM25's candidates (teacher scores, the students, their deploys and evaluation) need the slice's candidates
from a real cluster (``cluster``), which is cheap (1,000 documents, 150 queries) — nothing is trained or scored.
The slice's own ``train`` key (and everything downstream of it) reads the BM25 weight that ``auto`` chooses on the
fitted teacher's scores: an output of training, so it is pinned on variants of the slice whose fusion is fixed.

Rewrite the file (only when a key is meant to change): ``python -m tests.stage_keys`` with a cluster on
``ESDISTILL_TEST_ES_PORT``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXPECTED = Path(__file__).parent / "expected" / "regression-keys.json"
NAME = "regkeys"  # the data name: the index and alias names (part of some keys) derive from it

#: The slice, then variants of it whose keys need no training output (a fixed fusion), each covering key code the
#: slice does not reach: the student and everything after it, the corpus teacher and the log-only student, an
#: ensemble.
VARIANTS: dict[str, dict[str, Any]] = {
    "slice": {},
    "slice-fixed-weight": {"teacher": {"bm25_weight": 0.9}},
    "slice-corpus-teacher": {"teacher": {"bm25_weight": 0.5, "fit": {"source": "corpus"}},
                             "evaluate": {"systems": ["bm25", "zero_shot", "pipeline", "student", "judgments",
                                                      "log_only", "hybrid"]}},
    "slice-ensemble": {"teacher": {"ensemble": ["fit", "bi_encoder:minilm", "bm25"],
                                   "ensemble_weights": [0.5, 0.3, 0.2]}},
}


def variant_config(workdir: Path, es_url: str, variant: str):
    from esdistill.config import _deep_merge, build_config

    from .test_regression import slice_values

    return build_config(_deep_merge(slice_values(workdir, es_url, NAME), VARIANTS[variant]), profile="quick")


def offline_keys(project) -> dict[str, str]:
    """Keys that read only the config and the data: no cluster, no training output."""
    p = project
    return {
        "index": p.index_key,
        "candidates": p._candidates_cache().key,
        "test-candidates": p._test_candidates_cache().key,
        "teacher-fit": p._fit_cache().key,
        "ict-pairs": p._ict_pairs_cache().key,
        "teacher-ict": p._ict_cache().key,
        "deploy/zero_shot": p._deploy_key("zero_shot"),
        "embed/zero_shot": p._embed_cache("zero_shot").key,
        "query-vectors/zero_shot": p._query_vectors_cache("zero_shot").key,
        "evaluate-system/bm25": p._system_cache("bm25").key,
        "evaluate-system/zero_shot": p._system_cache("zero_shot").key,
    }


def cluster_keys(project) -> dict[str, str]:
    """Keys that chain on BM25's candidates (the project must have them: ``project.candidates()``) but on no
    training output — except where the config's fusion is ``auto`` (then the student's keys are left out)."""
    from esdistill.config import fingerprint

    p, cfg = project, project.cfg
    out: dict[str, str] = {}
    if cfg.teacher.kind == "ensemble":
        for c in p.member_caches():
            out[f"{c.stage}/{c.inputs['scorer']}"] = c.key
    else:
        out["teacher"] = p._teacher_cache(True).key
        unjudged = p._teacher_cache(False)
        out["teacher-unjudged"] = unjudged.key if unjudged is not None else None
    out["train-judgments"] = p._control_cache().key
    for which in ("judgments", *(["log_only"] if "log_only" in cfg.evaluate.systems else [])):
        if which == "log_only":
            out["train-log"] = p._log_only_cache().key
        out[f"deploy/{which}"] = p._deploy_key(which)
        out[f"embed/{which}"] = p._embed_cache(which).key
        out[f"query-vectors/{which}"] = p._query_vectors_cache(which).key
        out[f"evaluate-system/{which}"] = p._system_cache(which).key
    fixed = cfg.teacher.kind == "ensemble" and cfg.teacher.ensemble_weights is not None or (
        cfg.teacher.kind != "ensemble" and cfg.teacher.bm25_weight != "auto")
    if fixed:  # the labels' fusion is no training output: the student's key and all that follows it
        train = p._train_cache().key
        out.update({
            "train": train,
            "deploy/student": p._deploy_key("student"),
            "embed/student": p._embed_cache("student").key,
            "query-vectors/student": p._query_vectors_cache("student").key,
            **{f"evaluate-system/{n}": p._system_cache(n).key for n in cfg.evaluate.systems},
            "evaluate": p._eval_cache().key,
            "sweep-vectors": p._cache("sweep-vectors", p.keys.sweep_vectors()).key,
            "export": fingerprint({"student": train}),
            "student-model-id": p.student_model_id(),
            "dense-index/student": p.dense_index("student"),
        })
    return out


def all_keys(workdir: Path, client, es_url: str) -> dict[str, dict[str, str]]:
    """{variant: {stage: key}} for every variant, building the slice's BM25 index and candidates in ``client``'s
    cluster (once: the variants share them)."""
    from esdistill.pipeline import Project

    out = {}
    for variant in VARIANTS:
        project = Project(variant_config(workdir, es_url, variant), client=client)
        keys = offline_keys(project)
        project.candidates()
        keys.update(cluster_keys(project))
        out[variant] = keys
    return out


def dump(keys: dict[str, dict[str, str]]) -> str:
    return json.dumps(keys, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # pragma: no cover - rewrites the pinned file
    import tempfile

    from esdistill.cluster import connect
    from esdistill.config import ClusterSettings

    from .conftest import TEST_PORT

    url = f"http://127.0.0.1:{TEST_PORT}"
    es = connect(ClusterSettings(url=url))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            EXPECTED.write_text(dump(all_keys(Path(tmp) / "work", es, url)))
    finally:
        es.indices.delete(index=f"esdistill-{NAME}-*", ignore_unavailable=True, allow_no_indices=True)
    print(f"wrote {EXPECTED}")
