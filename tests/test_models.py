"""Model identities for cache keys: contents, not sizes; hub ids by revision."""

import os

import pytest

from esdistill.models import model_fingerprint


def _fake_model(folder, weights: bytes):
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(weights)
    return str(folder)


def test_refitting_into_the_same_folder_changes_the_fingerprint(tmp_path):
    """Same file names, same sizes, other weights (a model fine-tuned again into its folder): another key."""
    path = _fake_model(tmp_path / "m", b"\x00" * 4096)
    before = model_fingerprint(path)
    assert model_fingerprint(path) == before  # stable
    st = os.stat(tmp_path / "m" / "model.safetensors")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x01" * 4096)
    os.utime(tmp_path / "m" / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert model_fingerprint(path) != before


def test_hub_ids_resolve_to_the_cached_revision_or_warn(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    ref = tmp_path / "models--org--reranker" / "refs"
    ref.mkdir(parents=True)
    (ref / "main").write_text("0123abcd\n")
    assert model_fingerprint("org/reranker") == "org/reranker@0123abcd"
    with pytest.warns(UserWarning, match="cannot resolve it to a hub revision"):
        assert model_fingerprint("org/not-cached") == "org/not-cached"


def test_a_model_saved_by_another_sentence_transformers_loads(tmp_path, tiny_models):
    """sentence-transformers 6 saves Normalize as ``…base.modules.normalize.Normalize``, which 5.7 cannot import:
    a student trained on the GPU machine must still load here."""
    import json
    import shutil

    from esdistill.models import load_bi_encoder, make_loadable

    folder = tmp_path / "st6"
    shutil.copytree(tiny_models["bi"], folder)
    modules = json.loads((folder / "modules.json").read_text())
    for m in modules:
        m["type"] = "sentence_transformers.base.modules.normalize.Normalize" if m["type"].endswith("Normalize") \
            else m["type"]
    (folder / "modules.json").write_text(json.dumps(modules))
    changed = make_loadable(folder)
    assert len(changed) == 1 and changed[0].endswith(".Normalize")
    assert make_loadable(folder) == []  # nothing left to rewrite
    assert load_bi_encoder(str(folder)).encode("a query").shape == (32,)
