"""The Rally track of bench/rally/: its template renders to a valid track, and its parameter source sends the
queries file's bodies in turn — bodies the real cluster answers (Rally itself runs in bench/rally.py)."""

import importlib.util
import json
from pathlib import Path

import jinja2

from esdistill.candidates import bm25_body
from esdistill.config import DeployConfig
from esdistill.data import Doc
from esdistill.deploy import deploy_student
from esdistill.indexing import build_bm25_index
from esdistill.models import load_bi_encoder
from esdistill.search import knn_body

TRACK = Path(__file__).resolve().parent.parent / "bench" / "rally"


def _track_module():
    spec = importlib.util.spec_from_file_location("esdistill_rally_track", TRACK / "track.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_track_template_renders_two_timed_search_tasks():
    text = (TRACK / "track.json").read_text()
    track = json.loads(jinja2.Template(text).render(bm25_index="b", dense_index="d", queries="q.jsonl", clients=4,
                                                    time_period=20))
    tasks = {t["operation"]["name"]: t for t in track["schedule"]}
    assert set(tasks) == {"bm25", "knn"}
    for name, index in (("bm25", "b"), ("knn", "d")):
        op = tasks[name]["operation"]
        assert op["operation-type"] == "search" and op["param-source"] == "esdistill-queries"
        assert op["index"] == index and op["system"] == name and op["queries"] == "q.jsonl"
        assert tasks[name]["clients"] == 4 and tasks[name]["time-period"] == 20
    defaults = json.loads(jinja2.Template(text).render(bm25_index="b", dense_index="d", queries="q.jsonl"))
    assert defaults["schedule"][0]["clients"] == 8 and defaults["schedule"][0]["time-period"] == 30


def test_param_source_cycles_the_bodies_and_the_cluster_answers_them(es, index_name, tiny_models, tmp_path):
    model = load_bi_encoder(tiny_models["bi"], max_length=32)
    docs = [Doc(f"d{i}", f"title {i}", f"text on topic {i % 7} with words {i}") for i in range(60)]
    build_bm25_index(es, f"{index_name}-bm25", {d.id: d for d in docs}, key="k")
    deploy_student(es, model, docs, len(docs), f"{index_name}-dense", "rallykey0001", DeployConfig(), meta={})
    queries = [f"topic {i} words" for i in range(5)]
    lines = [{"bm25": bm25_body(q, ["title", "text"], 10),
              "knn": knn_body(model.encode(q, normalize_embeddings=True).tolist(), 10, 50)} for q in queries]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    registered = {}

    class Registry:
        def register_param_source(self, name, cls):
            registered[name] = cls

    _track_module().register(Registry())
    source_cls = registered["esdistill-queries"]
    for system, index in (("bm25", f"{index_name}-bm25"), ("knn", f"{index_name}-dense")):
        source = source_cls(None, {"index": index, "system": system, "queries": str(tmp_path / "queries.jsonl")})
        sent = [source.params() for _ in range(7)]
        assert [p["body"] for p in sent] == [x[system] for x in lines] + [lines[0][system], lines[1][system]]
        assert all(p["index"] == index and p["cache"] is False for p in sent)
        for p in sent[:5]:
            assert es.search(index=p["index"], body=p["body"]).body["hits"]["hits"]
        # clients start at their own offsets
        starts = [source.partition(i, 3).params()["body"] for i in range(3)]
        assert starts == [lines[0][system], lines[1][system], lines[3][system]]
