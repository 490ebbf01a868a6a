"""The console a user sees: esdistill's own lines and progress bars, none of the libraries' noise."""

import os
import re
import subprocess
import sys
import uuid


def test_the_console_holds_no_library_noise(tmp_path, es, es_url, tiny_models):
    from .conftest import SCIFACT

    name = f"cli{uuid.uuid4().hex[:6]}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'workdir = "{tmp_path / "work"}"\n[cluster]\nurl = "{es_url}"\n'
                   f'[data]\nname = "{name}"\nbeir = "{SCIFACT}"\nmax_train_queries = 8\nmax_test_queries = 4\n'
                   "max_corpus_docs = 60\n[candidates]\nk = 5\n"
                   f'[teacher.fit]\nbase_model = "{tiny_models["ce"]}"\nfolds = 2\nnegatives = 2\nepochs = 1\n'
                   "max_length = 32\n[teacher]\nmax_length = 32\n"
                   f'[train]\nbase_model = "{tiny_models["bi"]}"\nnegatives = 2\nepochs = 1\nmax_length = 32\n'
                   "dev_fraction = 0.0\n[evaluate]\nrerank_depth = 5\nk = 10\nnum_candidates = 20\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", COLUMNS="120")
    env.pop("ESDISTILL_VERBOSE", None)
    try:
        bad = subprocess.run([sys.executable, "-m", "esdistill", "run", "-c", str(cfg), "--systems", "bm25,bogus"],
                             capture_output=True, text=True, env=env)
        assert bad.returncode != 0 and "--systems 'bm25,bogus'" in bad.stderr and "Traceback" not in bad.stderr
        assert not list((tmp_path / "work").glob("*/*/done.json"))  # refused before any stage ran
        # --systems on run (and demo): the zero-shot base beside the trained student, in the same report
        proc = subprocess.run([sys.executable, "-m", "esdistill", "run", "-c", str(cfg), "--systems",
                               "bm25,zero_shot,pipeline,student,hybrid"], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout + proc.stderr
        assert "teacher fit [full]: 8 queries" in out  # our own lines, as written (not eaten as rich markup)
        assert "| BM25 |" in proc.stdout  # the report's table
        assert "| zero-shot base bi-encoder |" in proc.stdout
        assert list((tmp_path / "work").glob("*/*/done.json"))  # what the refused run above did not write
        assert "of 809 training queries are test queries" in out  # esdistill's own warning, one readable line
        for noise in (r"\d+it/s|s/it\]", r"\d+%\|", r"Warning:", r"warnings\.warn", r"\{'(train_)?loss'",
                      r"'train_runtime'", r"Some weights of", r"LOAD REPORT", r"You should probably TRAIN",
                      r"pin_memory", r"Traceback"):
            assert not re.search(noise, out), f"library noise on the console: {noise}"
        verbose = subprocess.run([sys.executable, "-m", "esdistill", "--verbose", "teacher", "fit", "-c", str(cfg)],
                                 capture_output=True, text=True, env=env)
        assert verbose.returncode == 0 and "teacher fit" in verbose.stderr
    finally:
        es.indices.delete(index=f"esdistill-{name}-*", ignore_unavailable=True, allow_no_indices=True)
