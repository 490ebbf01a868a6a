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
