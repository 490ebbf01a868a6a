"""Config: profiles lay defaults under the user's values; bad keys and types are named for humans."""

import pytest

from esdistill.config import build_config, load_config
from esdistill.errors import ConfigError


def test_profile_defaults_and_user_override():
    cfg = build_config({"data": {"name": "s", "beir": "x"}, "candidates": {"k": 12}}, profile="quick")
    assert cfg.candidates.k == 12  # the user's value wins
    assert cfg.teacher.fit.folds == 2 and cfg.evaluate.rerank_depth == 100  # quick defaults
    assert cfg.evaluate.pipeline_latency_queries == 10 and cfg.evaluate.hybrid_fusion == "minmax"
    full = build_config({"data": {"name": "s", "beir": "x"}}, profile="full")
    assert full.candidates.k == 100 and full.evaluate.rerank_depth == 100


def test_the_quick_teacher_yields_to_a_teacher_the_config_names():
    base = {"data": {"name": "s", "beir": "x"}}
    quick = build_config(base, profile="quick")
    assert quick.teacher.kind == "ensemble" and quick.teacher.ensemble == ["bi_encoder:bge-small", "bm25"]
    assert build_config(base, profile="full").teacher.kind == "fit"
    for own in ({"model": "my/reranker"}, {"fit": {"source": "corpus"}}, {"fit": {"epochs": 1.0}},
                {"bm25_weight": 0.5}, {"request_template": "tpl"}):
        cfg = build_config({**base, "teacher": own}, profile="quick")
        assert not cfg.teacher.ensemble, own
        assert cfg.teacher.fit.folds == 2  # the rest of the profile's teacher settings stay
    mine = build_config({**base, "teacher": {"ensemble": ["fit", "bm25"]}}, profile="quick")
    assert mine.teacher.ensemble == ["fit", "bm25"]
    assert build_config({**base, "teacher": {"max_length": 64}}, profile="quick").teacher.kind == "ensemble"


def test_unknown_key_and_wrong_type_are_named(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[data]\nname = "s"\nbeir = "x"\n[train]\nepochz = 3\nbatch_size = "big"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert f"{p}: train.epochz: unknown key" in msg
    assert "train.batch_size" in msg and "'big'" in msg


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "c.toml"
    p.write_text('workdir = "w"\n[data]\nname = "s"\nbeir = "../d"\n')
    cfg = load_config(p)
    assert cfg.data.beir == (tmp_path / "d").resolve()
    assert cfg.workdir == (tmp_path / "sub" / "w").resolve()


def test_data_source_must_be_one():
    with pytest.raises(ConfigError, match="set either data.beir"):
        build_config({"data": {"name": "s"}})
    with pytest.raises(ConfigError, match="needs data.train_queries"):
        build_config({"data": {"name": "s", "index": "idx"}})


def test_secrets_are_not_printed():
    cfg = build_config({"data": {"name": "s", "beir": "x"}, "cluster": {"url": "http://h:1", "api_key": "SEKRET"}})
    settings = cfg.cluster_settings()
    assert "SEKRET" not in repr(settings) and "SEKRET" not in str(settings.model_dump())
    assert settings.api_key.get_secret_value() == "SEKRET"


def test_cli_config_error_is_one_clear_message(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "c.toml"
    p.write_text('[data]\nname = "s"\nbeir = "x"\n[candidates]\nk = "many"\n')
    proc = subprocess.run([sys.executable, "-m", "esdistill", "candidates", "-c", str(p)], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "candidates.k" in proc.stderr and "'many'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_embedding_passes_need_a_bi_encoder_member_in_the_teacher():
    base = {"data": {"name": "s", "beir": "x"}, "train": {"embedding_passes": 1.0}}
    assert build_config(base, profile="quick").train.embedding_passes == 1.0  # bge-small is the quick member
    with pytest.raises(ConfigError, match="bi-encoder member.*bi_encoder:<model>"):
        build_config({**base, "teacher": {"ensemble": ["fit", "bm25"]}}, profile="quick")
