"""Data-parallel training under torchrun: two CPU processes over gloo fit the teacher and train the student on the
tiny slice; one process writes, the results files are those of a single process, uncached inputs are refused."""

import json
import os
import socket
import subprocess
import sys

import pytest

from esdistill.errors import InputError
from esdistill.pipeline import Project

from .conftest import tiny_config
from .test_clients import _toml


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cfg, *args):
    values = cfg.model_dump(mode="json", exclude={"cluster"}) | {"cluster": {"url": cfg.cluster.url}}
    path = cfg.workdir.parent / "c.toml"
    path.write_text(_toml(values))
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "esdistill", *args,
                           "-c", str(path)], capture_output=True, text=True, env=env, timeout=900)


def test_teacher_fit_and_student_train_run_data_parallel(tiny_project, tmp_path, es_url, tiny_models, es):
    project, _ = tiny_project
    name = project.cfg.data.name
    # the tiny project's candidates are reused (same workdir); a new seed makes a new fit and a new student
    cfg = tiny_config(tmp_path, es_url, tiny_models, name, teacher={"fit": {"seed": 7}}, train={"seed": 7})
    cfg = cfg.model_copy(update={"workdir": project.cfg.workdir})
    here = Project(cfg, client=es)
    assert here._candidates_cache().done and not here._fit_cache().done

    proc = torchrun(cfg, "teacher", "fit")
    assert proc.returncode == 0, proc.stderr[-4000:]
    fit = here._fit_cache()
    assert fit.done and set(fit.info()["models"]) == {"0", "1", "full"}
    for m in ("model-0", "model-1", "model-full"):
        assert (fit.path(m) / ".complete").exists()
    assert (proc.stdout + proc.stderr).count("teacher fit: 2 fold models + full model") == 1  # rank 0 speaks

    here.teacher()  # scoring: one process (under torchrun it is refused, below)
    proc = torchrun(cfg, "train")
    assert proc.returncode == 0, proc.stderr[-4000:]
    info = here._train_cache().info()
    assert info["processes"] == 2 and (proc.stdout + proc.stderr).count(" queries, dev ") == 1  # rank 0 speaks
    single = project._train_cache().info()  # the same settings in one process (another seed)
    assert info["examples"] == single["examples"]
    assert info["steps"] < single["steps"]  # each process took half of every epoch's batches
    from esdistill.models import load_bi_encoder

    model = load_bi_encoder(info["model"])
    assert model.encode(["a query"]).shape[1] == 32
    assert json.loads((here._train_cache().path("model") / "esdistill.json").read_text())["train_key"] == info["key"]


def test_uncached_inputs_are_refused_under_torchrun(tmp_path, es_url, tiny_models, es, monkeypatch):
    cfg = tiny_config(tmp_path, es_url, tiny_models, "never-indexed")
    monkeypatch.setenv("WORLD_SIZE", "2")
    project = Project(cfg, client=es)
    with pytest.raises(InputError, match="needs its inputs cached first; not cached: candidates"):
        project.teacher_fit()
    with pytest.raises(InputError, match="esdistill candidates"):
        project.train_judgments()
