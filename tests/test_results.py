"""The results index: its mapping on the real cluster, documents from a real summary, idempotent writes, the
Kibana saved objects only naming mapped fields, and the Kibana import's errors."""

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from esdistill.errors import ClusterError
from esdistill.evaluate import summarize
from esdistill.indexing import load_mapping
from esdistill.results import (RESULTS_INDEX, RESULTS_MAPPING, SAVED_OBJECTS, ensure_results_index,
                               import_saved_objects, result_docs, write_results)

QRELS = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
QUERIES = {"q1": "first query", "q2": "second query", "q3": "third query"}
RANKINGS = {  # system -> query -> ranked doc ids
    "bm25": {"q1": ["x", "a"], "q2": ["b"], "q3": ["x", "y"]},
    "pipeline": {"q1": ["a", "x"], "q2": ["b"], "q3": ["c", "x"]},
    "student": {"q1": ["x", "y", "a"], "q2": ["b", "x"], "q3": ["x", "c"]},
}
WALL = {"bm25": [1.0, 2.0, 3.0], "pipeline": [100.0, 200.0, 300.0], "student": [10.0, 20.0, 30.0]}
META = {"run_id": "run-1", "evaluate_key": "k123", "dataset": "toy", "profile": "quick", "model_id": "student-x",
        "teacher_id": "teacher-y", "timestamp": "2025-01-02T03:04:05+00:00", "password": "must-not-leak"}


def toy():
    results = {n: {"run": {q: {d: float(-i) for i, d in enumerate(ds)} for q, ds in r.items()},
                   "wall_ms": WALL[n], "took_ms": [w / 2 for w in WALL[n]], "extra_ms": {}}
               for n, r in RANKINGS.items()}
    return summarize(QRELS, results), results


def mapped_fields(props: dict, prefix: str = "") -> dict[str, dict]:
    out = {}
    for name, spec in props.items():
        out[prefix + name] = spec
        out.update(mapped_fields(spec.get("properties", {}), f"{prefix}{name}."))
        out.update(mapped_fields(spec.get("fields", {}), f"{prefix}{name}."))
    return out


def test_mapping_is_accepted_and_reads_back(es, index_name):
    assert ensure_results_index(es, index_name) is True
    assert ensure_results_index(es, index_name) is False  # exists: left alone
    body = load_mapping(RESULTS_MAPPING)
    got = es.indices.get_mapping(index=index_name).body[index_name]["mappings"]
    assert got["dynamic"] == "strict" and "_meta" not in got
    for field, spec in body["mappings"]["properties"].items():
        assert got["properties"][field]["type"] == spec["type"]
    assert got["properties"]["query_text"]["fields"]["keyword"] == {"type": "keyword", "ignore_above": 512}
    settings = es.indices.get_settings(index=index_name).body[index_name]["settings"]["index"]
    assert settings["number_of_shards"] == "1" and settings["number_of_replicas"] == "0"


def test_docs_from_a_real_summary_are_written_once(es, index_name):
    summary, results = toy()
    docs = result_docs(summary, results, QUERIES, META)
    assert len(docs) == 3 * 3 + 3
    assert all("password" not in d and "must-not-leak" not in json.dumps(d) for d in docs)
    assert write_results(es, docs, index=index_name) == 12
    assert es.count(index=index_name).body["count"] == 12
    assert write_results(es, result_docs(summary, results, QUERIES, META), index=index_name) == 12
    assert es.count(index=index_name).body["count"] == 12  # same ids: overwritten, not duplicated

    # q1: BM25 has the relevant doc at rank 2, the student at rank 3, the pipeline at rank 1.
    student_q1 = es.get(index=index_name, id="k123:student:q1").body["_source"]
    assert student_q1["ndcg_at_10"] == pytest.approx(0.5)
    assert student_q1["ndcg_at_10_delta_vs_bm25"] == pytest.approx(0.5 - 1 / math.log2(3), abs=1e-6)
    assert student_q1["outcome_vs_bm25"] == "loss"
    assert student_q1["latency_ms"] == 10.0 and student_q1["es_took_ms"] == 5.0
    assert student_q1["query_text"] == "first query" and student_q1["doc_type"] == "query"
    assert student_q1["run_id"] == "run-1" and student_q1["@timestamp"] == META["timestamp"]
    pipeline_q1 = es.get(index=index_name, id="k123:pipeline:q1").body["_source"]
    assert pipeline_q1["outcome_vs_bm25"] == "win"
    assert pipeline_q1["ndcg_at_10_delta_vs_bm25"] == pytest.approx(1 - 1 / math.log2(3), abs=1e-6)
    assert es.get(index=index_name, id="k123:student:q2").body["_source"]["outcome_vs_bm25"] == "tie"
    assert es.get(index=index_name, id="k123:student:q3").body["_source"]["outcome_vs_bm25"] == "win"

    system = es.get(index=index_name, id="k123:student:_all").body["_source"]
    s = summary["systems"]["student"]
    assert system["doc_type"] == "system" and system["queries"] == 3 and "query_id" not in system
    assert system["ndcg_at_10"] == pytest.approx(s["ndcg@10"], abs=1e-6)
    assert system["share_of_gain"] == pytest.approx(s["share_of_gain"], abs=1e-6)
    assert system["latency_p50_ms"] == pytest.approx(20.0) and system["latency_p95_ms"] == pytest.approx(29.0)
    outcomes = es.search(index=index_name, size=0, query={"term": {"doc_type": "query"}},
                         aggs={"o": {"terms": {"field": "outcome_vs_bm25"}}}).body["aggregations"]["o"]["buckets"]
    assert {b["key"]: b["doc_count"] for b in outcomes} == {"tie": 5, "win": 3, "loss": 1}


def test_refused_documents_raise(es, index_name):
    summary, results = toy()
    docs = result_docs(summary, results, QUERIES, META)
    docs[0]["not_mapped"] = 1
    with pytest.raises(ClusterError, match="refused"):
        write_results(es, docs, index=index_name)


def referenced_fields(node, out: set[str]) -> set[str]:
    """Every field a saved object names: field-valued keys and the fields of KQL queries, in JSON strings too."""
    if isinstance(node, str) and node[:1] in "[{":
        try:
            node = json.loads(node)
        except ValueError:
            return out
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("sourceField", "sortField", "timeFieldName", "fieldName", "field") and isinstance(value, str):
                out.add(value)
        if node.get("language") == "kuery" and isinstance(node.get("query"), str):
            out.update(re.findall(r"([A-Za-z_@][\w.@]*)\s*:", node["query"]))
        for value in node.values():
            referenced_fields(value, out)
    elif isinstance(node, list):
        for value in node:
            referenced_fields(value, out)
    return out


def test_saved_objects_name_only_mapped_fields(es, index_name):
    objects = [json.loads(line) for line in SAVED_OBJECTS.read_text().splitlines() if line.strip()]
    by_type = {}
    for o in objects:
        by_type.setdefault(o["type"], []).append(o)
    (view,) = by_type["index-pattern"]
    assert view["id"] == view["attributes"]["title"] == RESULTS_INDEX
    assert view["attributes"]["timeFieldName"] == "@timestamp"
    (dash,) = by_type["dashboard"]
    assert dash["id"] == "esdistill-relevance"
    lens_ids = {o["id"] for o in by_type["lens"]}
    assert len(lens_ids) == 4 and {r["id"] for r in dash["references"]} == lens_ids
    panels = json.loads(dash["attributes"]["panelsJSON"])
    assert {f"{p['panelIndex']}:{p['panelRefName']}" for p in panels} == {r["name"] for r in dash["references"]}
    for o in by_type["lens"]:
        assert {r["id"] for r in o["references"]} == {RESULTS_INDEX}
        layers = o["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
        assert {r["name"] for r in o["references"]} == {f"indexpattern-datasource-layer-{k}" for k in layers}

    ensure_results_index(es, index_name)
    mapping = es.indices.get_mapping(index=index_name).body[index_name]["mappings"]["properties"]
    fields = referenced_fields(objects, set()) - {"___records___"}
    assert {"@timestamp", "system", "run_id", "doc_type", "ndcg_at_10", "outcome_vs_bm25", "latency_ms",
            "agreement_ndcg_at_10", "overlap_at_10"} <= fields
    assert fields <= set(mapped_fields(mapping)), fields - set(mapped_fields(mapping))
    # the dashboard's controls pick a dataset, a profile and a run: options lists need keyword fields
    controls = json.loads(dash["attributes"]["controlGroupInput"]["panelsJSON"])
    picked = {c["explicitInput"]["fieldName"] for c in controls.values()}
    assert {"dataset", "profile", "run_id"} <= picked
    assert all(mapping[f]["type"] == "keyword" for f in picked)
    assert all(c["explicitInput"]["dataViewId"] == RESULTS_INDEX for c in controls.values())


def test_import_unreachable_kibana_names_the_url():
    with pytest.raises(ClusterError) as e:
        import_saved_objects("http://127.0.0.1:1", SAVED_OBJECTS, username="elastic", password="s3cret-pw",
                             timeout=5)
    assert "http://127.0.0.1:1" in str(e.value) and "s3cret-pw" not in str(e.value)


@pytest.fixture
def fake_kibana():
    """A local HTTP server answering ``_import`` with ``answer``; records each request."""
    seen, answer = [], {"body": {"success": True, "successCount": 5}, "not_ready": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # /api/status: 503 while "not ready", as Kibana answers right after it starts
            ready = answer["not_ready"] <= 0
            answer["not_ready"] -= 1
            seen.append({"path": self.path, "ready": ready})
            self.send_response(200 if ready else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
            out = json.dumps(answer["body"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen, answer
    server.shutdown()
    server.server_close()


def test_import_posts_the_ndjson_and_reports_failures(fake_kibana):
    url, seen, answer = fake_kibana
    assert import_saved_objects(url + "/", SAVED_OBJECTS, api_key="key-secret") == answer["body"]
    (req,) = seen
    assert req["path"] == "/api/saved_objects/_import?overwrite=true"
    assert req["headers"]["kbn-xsrf"] == "true" and req["headers"]["Authorization"] == "ApiKey key-secret"
    assert req["headers"]["Content-Type"].startswith("multipart/form-data")
    assert b'name="file"' in req["body"] and SAVED_OBJECTS.read_bytes() in req["body"]

    answer["body"] = {"success": False, "successCount": 1,
                      "errors": [{"type": "lens", "id": "x", "error": {"type": "missing_references"}}]}
    with pytest.raises(ClusterError) as e:
        import_saved_objects(url, SAVED_OBJECTS, api_key="key-secret")
    assert url in str(e.value) and "missing_references" in str(e.value) and "key-secret" not in str(e.value)


def test_import_waits_while_kibana_is_not_ready(fake_kibana):
    url, seen, answer = fake_kibana
    answer["not_ready"] = 2
    assert import_saved_objects(url, SAVED_OBJECTS, wait=30) == answer["body"]
    assert [r.get("ready") for r in seen if r["path"] == "/api/status"] == [False, False, True]
    answer["not_ready"] = 100
    with pytest.raises(ClusterError, match=r"was not ready within 1 s \(HTTP 503"):
        import_saved_objects(url, SAVED_OBJECTS, wait=1)
