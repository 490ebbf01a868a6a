"""A process killed in the middle of a stage: the rerun continues from what was written, not from zero."""

import os
import signal
import subprocess
import sys
import time
import uuid

from esdistill.config import load_config
from esdistill.pipeline import Project

from .conftest import SCIFACT


def test_killed_teacher_resumes_from_its_chunks(tmp_path, es, es_url, tiny_models):
    name = f"kill{uuid.uuid4().hex[:6]}"
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(
        f'workdir = "{tmp_path / "work"}"\n'
        f'[data]\nname = "{name}"\nbeir = "{SCIFACT}"\nmax_train_queries = 40\nmax_test_queries = 5\n'
        f'max_corpus_docs = 150\n[cluster]\nurl = "{es_url}"\n[candidates]\nk = 10\n'
        f'[teacher]\nmodel = "{tiny_models["ce"]}"\nmax_length = 256\nbatch_size = 4\nchunk_queries = 2\n')
    try:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        proc = subprocess.Popen([sys.executable, "-m", "esdistill", "teacher", "-c", str(cfg_file)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        parts_glob = lambda: list((tmp_path / "work" / "teacher").glob("*/parts/*.parquet"))  # noqa: E731
        deadline = time.monotonic() + 180
        while len(parts_glob()) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len(parts_glob())
        assert done_before >= 3, "the teacher never wrote a chunk"
        project = Project(load_config(cfg_file), client=es)
        cache = project._teacher_cache()
        assert not cache.done  # the killed run did not finish
        info = project.teacher()
        pairs = project.teacher_pairs()
        assert info["pairs"] == len(pairs)  # counts in == counts out
        assert 0 < info["scored_now"] < len(pairs)  # only what the killed run had not written
        scores = project.scores_frame()
        assert not scores.duplicated(["qid", "docid"]).any()
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)


def test_killed_training_resumes_from_its_checkpoint(tmp_path, es, es_url, tiny_models):
    name = f"ktr{uuid.uuid4().hex[:6]}"
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(
        f'workdir = "{tmp_path / "work"}"\n'
        f'[data]\nname = "{name}"\nbeir = "{SCIFACT}"\nmax_train_queries = 30\nmax_test_queries = 5\n'
        f'max_corpus_docs = 120\n[cluster]\nurl = "{es_url}"\n[candidates]\nk = 6\n'
        f'[teacher]\nmodel = "{tiny_models["ce"]}"\nmax_length = 32\n'
        f'[train]\nbase_model = "{tiny_models["bi"]}"\nnegatives = 2\nepochs = 40\nbatch_size = 4\n'
        f'max_length = 32\ndev_fraction = 0.0\nsave_steps = 10\n')
    try:
        project = Project(load_config(cfg_file), client=es)
        project.teacher()  # labels first, in-process: only training runs in the process we kill
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        proc = subprocess.Popen([sys.executable, "-m", "esdistill", "train", "-c", str(cfg_file)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpts = lambda: list((tmp_path / "work" / "train").glob("*/checkpoints/checkpoint-*"))  # noqa: E731
        deadline = time.monotonic() + 240
        while not any(int(p.name.split("-")[-1]) >= 20 for p in ckpts()) and time.monotonic() < deadline:
            assert proc.poll() is None, "training finished before it could be killed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(0.5)
        assert ckpts(), "no checkpoint written"
        info = Project(load_config(cfg_file), client=es).train()
        # from the newest COMPLETE checkpoint (one killed mid-write is discarded): at least step 10, not step 0
        assert info["resumed_from"] is not None and int(info["resumed_from"].split("-")[-1]) >= 10
        assert info["steps"] > int(info["resumed_from"].split("-")[-1])  # continued to the end from there
        assert (tmp_path / "work" / "train" / project._train_cache().key / "model" / "esdistill.json").exists()
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)
