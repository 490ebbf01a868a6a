"""Every cache key of the regression slice is what ``tests/expected/regression-keys.json`` says, byte for byte:
a change in how a stage is keyed (a refactor, a renamed input) would silently invalidate users' caches.
Nothing is trained or scored: the keys that chain on BM25's candidates get them from the real cluster
(tests/stage_keys.py says what is pinned and what cannot be)."""

from __future__ import annotations

import json

import pytest

from .stage_keys import EXPECTED, NAME, VARIANTS, all_keys, offline_keys, variant_config


def _compare(got: dict, want: dict) -> list[str]:
    return [f"{stage}: {want.get(stage)} → {got.get(stage)}" for stage in sorted(set(got) | set(want))
            if got.get(stage) != want.get(stage)]


def test_offline_keys_match_the_pinned_file(tmp_path):
    """The keys that read only the config and the data (no cluster is contacted)."""
    from esdistill.pipeline import Project

    expected = json.loads(EXPECTED.read_text())
    for variant in VARIANTS:
        project = Project(variant_config(tmp_path / "work", "http://127.0.0.1:1", variant))
        got = offline_keys(project)
        want = {k: v for k, v in expected[variant].items() if k in got}
        assert not _compare(got, want), f"{variant}: keys changed: {_compare(got, want)}"
        assert project._client is None  # no cluster was needed


def test_every_key_matches_the_pinned_file(tmp_path, es, es_url):
    from .stage_keys import dump

    try:
        got = all_keys(tmp_path / "work", es, es_url)
    finally:
        es.indices.delete(index=f"esdistill-{NAME}-*", ignore_unavailable=True, allow_no_indices=True)
    expected = json.loads(EXPECTED.read_text())
    changed = {v: _compare(got.get(v, {}), expected.get(v, {})) for v in set(got) | set(expected)}
    assert not any(changed.values()), f"cache keys changed: {changed}"
    assert dump(got) == EXPECTED.read_text()  # byte for byte, every variant and stage


@pytest.mark.parametrize(("perturb", "stage"), [
    ({"candidates": {"k": 21}}, "candidates"),
    ({"evaluate": {"rerank_depth": 25}}, "test-candidates"),
    ({"teacher": {"fit": {"folds": 3}}}, "teacher-fit"),
    ({"deploy": {"m": 24}}, "deploy/zero_shot"),
    ({"evaluate": {"num_candidates": 77}}, "evaluate-system/zero_shot"),
])
def test_a_changed_input_changes_its_pinned_key(tmp_path, monkeypatch, perturb, stage):
    """The pin can fail: one input of ``stage`` changed, its key differs from the file's (and the comparison
    above reports it)."""
    from esdistill.config import _deep_merge
    from esdistill.pipeline import Project

    from . import stage_keys

    monkeypatch.setitem(stage_keys.VARIANTS, "slice", _deep_merge(VARIANTS["slice"], perturb))
    expected = json.loads(EXPECTED.read_text())["slice"]
    got = offline_keys(Project(variant_config(tmp_path / "work", "http://127.0.0.1:1", "slice")))
    assert got[stage] != expected[stage]
    assert f"{stage}: {expected[stage]} → {got[stage]}" in _compare(got, expected)
