"""``esdistill`` — a thin typer CLI over :mod:`esdistill.pipeline`.

Every option has an environment-variable default (``ESDISTILL_CONFIG``, ``ESDISTILL_PROFILE``; cluster
settings are ``ESDISTILL_ES_*``). Errors the user can fix are printed as one message with a hint, exit code 2.
"""

from __future__ import annotations

import functools
from enum import Enum
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .config import load_config
from .errors import EsdistillError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(help="Distill BM25 → cross-encoder into one bi-encoder served by kNN from Elasticsearch.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
cluster_app = typer.Typer(help="The local Elasticsearch test build, or a local OpenSearch (no Docker needed).", no_args_is_help=True)
teacher_app = typer.Typer(help="Score candidates with the teacher; `teacher fit` trains one from judgments.",
                          invoke_without_command=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(teacher_app, name="teacher")
kibana_app = typer.Typer(help="Kibana saved objects: the relevance dashboard over the results index.",
                         no_args_is_help=True)
app.add_typer(kibana_app, name="kibana")
console = Console(stderr=True)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", envvar="ESDISTILL_CONFIG", help="TOML config file")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", envvar="ESDISTILL_PROFILE",
                                                help="quick | full (default: the config's, else quick)")]


@app.callback()
def main_options(verbose: Annotated[bool, typer.Option("--verbose", "-v", envvar="ESDISTILL_VERBOSE",
                                                      help="also show the libraries' own output (warnings, "
                                                      "progress, training logs)")] = False):
    """Distill BM25 → cross-encoder into one bi-encoder served by kNN from Elasticsearch."""
    if not verbose:
        from .console import quiet_libraries

        quiet_libraries(console)


def friendly(fn):
    """Print :class:`EsdistillError` as a message, not a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EsdistillError as e:
            console.print(f"[bold red]error:[/] {e.message}")
            if e.hint:
                console.print(f"[yellow]hint:[/] {e.hint}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted — rerun the same command to resume from the cache[/]")
            raise typer.Exit(130) from None
    return wrapper


def _project(config: Path, profile: str | None, **overrides):
    from .pipeline import Project

    return Project(load_config(config, profile, **overrides), console=console)


# ------------------------------------------------------------------------------------------------ cluster
class EngineChoice(str, Enum):
    elasticsearch = "elasticsearch"
    opensearch = "opensearch"


EngineOpt = Annotated[EngineChoice | None, typer.Option(
    "--engine", help="which local node: Elasticsearch's test build or OpenSearch (k-NN, ml-commons, neural-search); "
         "default ESDISTILL_ES_ENGINE, else elasticsearch")]


def _local_node(engine: EngineChoice | None):
    """The local node of ``engine``: :class:`esdistill.cluster.LocalCluster` or
    :class:`esdistill.opensearch_node.OpenSearchNode` (same start/stop/status)."""
    from .config import ClusterSettings

    if ((engine and engine.value) or ClusterSettings().engine) == "opensearch":
        from .opensearch_node import OpenSearchNode

        return OpenSearchNode()
    from .cluster import LocalCluster

    return LocalCluster()


@cluster_app.command("start")
@friendly
def cluster_start(timeout: Annotated[float, typer.Option(help="seconds to wait for health")] = 180.0,
                  engine: EngineOpt = None):
    """Download (once), configure and start a single-node Elasticsearch (or, with --engine opensearch, an
    OpenSearch assembled from Maven Central) on loopback."""
    lc = _local_node(engine)
    name = getattr(lc, "name", "Elasticsearch")
    with console.status(f"starting {name} {lc.s.version} on {lc.s.url} …") as status:
        st = lc.start(timeout=timeout, progress=lambda msg: status.update(f"{msg} …"))
    console.print(f"{name} {st.version} is up at {st.url} (pid {st.pid}, health {st.health}); home {st.home}")


@cluster_app.command("stop")
@friendly
def cluster_stop(engine: EngineOpt = None):
    """Stop the local node."""
    console.print("stopped" if _local_node(engine).stop() else "not running")


@cluster_app.command("status")
@friendly
def cluster_status(engine: EngineOpt = None):
    """Is the local node running? Exit code 0 if so, 1 if not."""
    st = _local_node(engine).status()
    console.print(f"{'running' if st.running else 'not running'}: {st.url} version {st.version} "
                  f"pid {st.pid} health {st.health} home {st.home}")
    raise typer.Exit(0 if st.running else 1)


# ------------------------------------------------------------------------------------------------- stages
@app.command()
@friendly
def index(config: ConfigOpt, profile: ProfileOpt = None):
    """Create the BM25 index from mappings/ and bulk-index the corpus (counts verified)."""
    _project(config, profile).index()


@app.command()
@friendly
def candidates(config: ConfigOpt, profile: ProfileOpt = None):
    """BM25 top-k for every training query (_msearch), and the corpus teacher's inverse-cloze pairs when it is
    configured: everything training reads from the cluster."""
    project = _project(config, profile)
    project.candidates()
    if "ict" in project.fits_needed():
        project.ict_pairs()


@teacher_app.callback()
@friendly
def teacher(ctx: typer.Context, config: ConfigOpt = None, profile: ProfileOpt = None):
    """Score every (query, candidate) with the cross-encoder (raw logits, Parquet)."""
    if ctx.invoked_subcommand is None:
        if config is None:
            raise EsdistillError("missing --config", hint="esdistill teacher --config FILE")
        _project(config, profile).teacher()


@teacher_app.command("fit")
@friendly
def teacher_fit(config: ConfigOpt, profile: ProfileOpt = None):
    """Fine-tune cross-encoder teachers from judgments, cross-fitted in k folds."""
    _project(config, profile).teacher_fit()


@app.command()
@friendly
def train(config: ConfigOpt, profile: ProfileOpt = None,
          judgments: Annotated[bool, typer.Option("--judgments", help="train the control instead: a student on "
                                                  "the judgments only, no teacher")] = False):
    """Distill the teacher into the student bi-encoder."""
    project = _project(config, profile)
    project.train_judgments() if judgments else project.train()


@app.command()
@friendly
def deploy(config: ConfigOpt, profile: ProfileOpt = None):
    """Embed the corpus with the student into a new dense_vector index; move the alias onto it."""
    _project(config, profile).deploy()


@app.command()
@friendly
def monitor(config: ConfigOpt, profile: ProfileOpt = None,
            queries: Annotated[Path | None, typer.Option(help="recent queries: one per line, or JSONL (default: "
                                                         "[monitor] queries)")] = None,
            index: Annotated[str | None, typer.Option(help="or an index of logged queries (default: [monitor] "
                                                      "index)")] = None,
            sample: Annotated[int | None, typer.Option(help="queries to draw (default: [monitor] sample)")] = None,
            min_ndcg: Annotated[float | None, typer.Option(help="exit 4 when the mean agreement NDCG@10 is below "
                                                           "this (default: [monitor] min_ndcg)")] = None):
    """Agreement of the deployed student with the pipeline on recent queries (NDCG@10 against the pipeline's top
    10, overlap@10, Kendall's tau), into the results index; exit 4 below the threshold, for a scheduler."""
    overrides: dict = {}
    if sample is not None:
        overrides["sample"] = sample
    if min_ndcg is not None:
        overrides["min_ndcg"] = min_ndcg
    project = _project(config, profile, **({"monitor": overrides} if overrides else {}))
    report = project.monitor(str(queries) if queries else None, index)
    if report["below"]:
        console.print(f"[bold red]monitor:[/] mean agreement NDCG@10 {report['mean']['ndcg@10']:.3f} is below "
                      f"{project.cfg.monitor.min_ndcg}: the student no longer agrees with the pipeline — retrain")
        raise typer.Exit(4)


@app.command()
@friendly
def rollback(config: ConfigOpt, profile: ProfileOpt = None):
    """Point the student alias back at the previously deployed index version."""
    from .deploy import rollback as do_rollback

    project = _project(config, profile)
    frm, to = do_rollback(project.client, project.cfg.dense_alias)
    console.print(f"alias {project.cfg.dense_alias}: {frm} → {to}")


@app.command()
@friendly
def versions(config: ConfigOpt, profile: ProfileOpt = None):
    """List the index versions the student alias served (first served first); indices built only for
    evaluation are not versions."""
    from .deploy import versions as list_versions

    project = _project(config, profile)
    for v in list_versions(project.client, project.cfg.dense_alias):
        console.print(f"{'*' if v['live'] else ' '} {v['index']}  created {v['created']}  first served "
                      f"{v['served'] or 'before esdistill kept the history'}  model {v['model']}")


SystemsOpt = Annotated[str | None, typer.Option(
    help="comma-separated: bm25, zero_shot, pipeline, student, log_only, judgments, hybrid; or headline (all "
         "of these: trains the log-only student and the judgments-only control too) (default: [evaluate] "
         "systems)")]


def _set_systems(project, systems: str | None) -> None:
    """``--systems``: the systems evaluation measures, instead of the config's ``[evaluate] systems``."""
    if not systems:
        return
    from pydantic import ValidationError

    from .evaluate import HEADLINE_SYSTEMS

    names = (HEADLINE_SYSTEMS if systems.strip() == "headline"
             else [s.strip() for s in systems.split(",") if s.strip()])
    try:
        project.cfg.evaluate.systems = names
    except ValidationError as e:
        raise EsdistillError(f"--systems {systems!r}: {e.errors()[0]['msg']}",
                             hint="e.g. --systems bm25,pipeline,student,hybrid, or --systems headline") from None


@app.command()
@friendly
def evaluate(config: ConfigOpt, profile: ProfileOpt = None, systems: SystemsOpt = None):
    """BM25, pipeline, student and hybrid on the test queries: quality and latency side by side."""
    project = _project(config, profile)
    _set_systems(project, systems)
    project.evaluate()


@app.command()
@friendly
def run(config: Annotated[Path | None, typer.Option("--config", "-c", envvar="ESDISTILL_CONFIG",
                                                    help="TOML config file (with --offline: the bundle's)")] = None,
        profile: ProfileOpt = None,
        start_cluster: Annotated[bool, typer.Option(help="start the local test cluster if no URL is set")] = True,
        offline: Annotated[bool, typer.Option("--offline", help="run the model stages from --bundle, with no "
                                              "cluster (a GPU box)")] = False,
        bundle: Annotated[Path | None, typer.Option(help="with --offline: the folder `bundle export` wrote")] = None,
        workdir: Annotated[Path | None, typer.Option(help="with --offline: where the caches go (default: "
                                                     ".esdistill here)")] = None,
        systems: SystemsOpt = None):
    """Every stage, from one config file (finished stages are cache hits). With --offline, every stage that needs
    no cluster, from a bundle."""
    if offline:
        if bundle is None:
            raise EsdistillError("--offline needs --bundle", hint="esdistill run --offline --bundle FOLDER")
        project = _offline_project(bundle, workdir, config, profile)
        done = project.run_offline()
        console.print(f"offline stages done in {project.workdir}: " + ", ".join(
            f"{k} ({'cached' if v.get('cached') else 'now'})" for k, v in done.items()))
        console.print(f"next: esdistill bundle pack --bundle {bundle} --workdir {project.workdir} --out FOLDER")
        return
    if config is None:
        raise EsdistillError("missing --config", hint="esdistill run --config FILE")
    project = _project(config, profile)
    _set_systems(project, systems)
    _run_all(project, start_cluster)


def _run_all(project, start_cluster: bool) -> None:
    """Every stage of ``project``, starting the local test cluster first when no URL is set."""
    settings = project.cfg.cluster_settings()
    if start_cluster and not settings.url:
        lc = _local_node(EngineChoice(settings.engine) if settings.engine else None)  # [cluster] engine's node
        if not lc.status().running:
            with console.status(f"starting the local {getattr(lc, 'name', 'Elasticsearch')} …"):
                lc.start()
    project.run()


@app.command()
@friendly
def demo(profile: ProfileOpt = None,
         workdir: Annotated[Path, typer.Option(help="caches, models and reports")] = Path(".esdistill"),
         start_cluster: Annotated[bool, typer.Option(help="start the local test cluster if no URL is set")] = True,
         systems: SystemsOpt = None):
    """The SciFact demo from what is installed with esdistill (its example config and vendored dataset): every
    stage, against ESDISTILL_ES_URL or a local test cluster. `--systems headline` adds the zero-shot base, the
    log-only student and the judgments-only control to the report (two more trainings and three more indices:
    about 20 minutes more on 2 CPU cores)."""
    from .resources import resource

    project = _project(resource("examples", "scifact.toml"), profile, workdir=str(workdir.resolve()))
    _set_systems(project, systems)
    _run_all(project, start_cluster)


def _offline_project(bundle: Path, workdir: Path | None, config: Path | None, profile: str | None):
    from .bundle import Bundle
    from .pipeline import Project

    b = Bundle(bundle)
    work = (workdir or Path(".esdistill")).resolve()
    cfg = (load_config(config, profile, workdir=str(work)) if config else b.config(work, profile))
    project = Project(cfg, console=console, bundle=b)
    if project._candidates_cache().key != b.meta["stages"]["candidates"]:
        raise EsdistillError("this config does not match the bundle's (its training queries or candidates differ)",
                             hint="leave --config out to use the bundle's own, or export the bundle again")
    return project


@app.command()
def stages():
    """The stages of the loop: what each one's cache key is made of, whether it needs the cluster, what it writes."""
    from rich.table import Table

    from .stages import STAGES

    table = Table(title="esdistill stages (cache: <workdir>/<stage>/<key>/)")
    for col in ("stage", "needs the cluster", "key made of", "writes"):
        table.add_column(col)
    for s in STAGES.values():
        table.add_row(s.name, "yes" if s.needs_cluster else "no", s.reads, s.writes)
    Console().print(table)


bundle_app = typer.Typer(help="Run the model stages on a machine that cannot reach the cluster.", no_args_is_help=True)
app.add_typer(bundle_app, name="bundle")


@bundle_app.command("export")
@friendly
def bundle_export(config: ConfigOpt, out: Annotated[Path, typer.Option(help="an empty folder for the bundle")],
                  profile: ProfileOpt = None,
                  carry_model: Annotated[list[str] | None, typer.Option(
                      "--carry-model", help="a base model (as the config names it) to carry as float16, for a "
                      "machine without it; repeat for several")] = None):
    """Where the cluster is: index, candidates and the pipeline's BM25 answers for the test queries, and the data
    the model stages read, into one folder."""
    from .bundle import export as do_export

    info = do_export(_project(config, profile), out, carry_model or [])
    console.print(f"bundle: {info['folder']} ({info['bytes'] / 2**20:.1f} MiB; {info['facts']['docs']} documents, "
                  + ", ".join(f"{n} {r} queries" for r, n in info["queries"].items() if n) + ")")
    console.print(f"next, on the other machine: esdistill run --offline --bundle {out}")


@bundle_app.command("pack")
@friendly
def bundle_pack(bundle: Annotated[Path, typer.Option(help="the bundle the offline run used")],
                out: Annotated[Path, typer.Option(help="folder for the parts to carry back")],
                workdir: Annotated[Path | None, typer.Option(help="the offline run's work dir")] = None,
                config: Annotated[Path | None, typer.Option("--config", "-c", help="the offline run's config, if "
                                                            "not the bundle's")] = None,
                profile: ProfileOpt = None,
                weights: Annotated[str, typer.Option(help="comma-separated models whose weights travel back "
                                                     "(float16): student, judgments, teacher; or none")] = "student",
                vectors: Annotated[str | None, typer.Option(help="comma-separated served models whose vectors "
                                                            "travel back (default: all)")] = None,
                part_mb: Annotated[float, typer.Option(help="largest part, MiB")] = 16.0,
                budget_mb: Annotated[float, typer.Option(help="refuse to write more than this, MiB")] = 64.0):
    """On the offline machine: the offline stages' results, cut into parts to carry back."""
    from .bundle import pack

    project = _offline_project(bundle, workdir, config, profile)
    keep = tuple(w.strip() for w in weights.split(",") if w.strip() and w.strip() != "none")
    m = pack(project, out, part_mb=part_mb, budget_mb=budget_mb, weights=keep,
             vectors=tuple(v.strip() for v in vectors.split(",")) if vectors else None)
    console.print(f"packed {len(m['folders'])} stage folders, {m['bytes'] / 2**20:.1f} MiB in {len(m['parts'])} "
                  f"parts into {out}")


@bundle_app.command("import")
@friendly
def bundle_import(folder: Annotated[Path, typer.Argument(help="the folder `bundle pack` wrote")], config: ConfigOpt,
                  profile: ProfileOpt = None):
    """Where the cluster is: unpack what the offline run made into this config's caches; `esdistill run` then
    finds those stages done and deploys and evaluates."""
    from .bundle import import_return

    cfg = load_config(config, profile)
    info = import_return(folder, Path(cfg.workdir))
    console.print(f"imported {len(info['folders'])} stage folders ({info['bytes'] / 2**20:.1f} MiB) into "
                  f"{cfg.workdir}: " + ", ".join(info["folders"]))


@app.command()
@friendly
def search(query: Annotated[str, typer.Argument(help="the user's query")], config: ConfigOpt,
           profile: ProfileOpt = None,
           system: Annotated[str, typer.Option(help="bm25 | student | hybrid | pipeline")] = "student",
           size: Annotated[int, typer.Option(help="hits to show")] = 10,
           num_candidates: Annotated[int | None, typer.Option(help="kNN candidates (default: [evaluate])")] = None,
           filter: Annotated[str | None, typer.Option(help='kNN filter, a query as JSON, e.g. \'{"term": {"lang": "en"}}\'')]
           = None,
           oversample: Annotated[float | None, typer.Option(help="rescore_vector oversample (int8/bbq indices)")]
           = None,
           show_request: Annotated[bool, typer.Option(help="print the complete request your application would "
                                                      "send (index or alias, body with the real vector, a curl line)")]
           = False,
           vector_builder: Annotated[str | None, typer.Option(help="with --show-request: the query_vector_builder "
                                                              "form for this uploaded model id (a cluster with ML "
                                                              "encodes the query itself)")] = None,
           query_encoder: Annotated[str | None, typer.Option(
               help="auto | torch | onnx | onnx-int8 (default: [evaluate])")] = None):
    """Answer one query with one system against the deployed indices; prints hits and timings."""
    import json

    from pydantic import ValidationError
    from rich.table import Table

    project = _project(config, profile)
    if query_encoder:
        try:
            project.cfg.evaluate.query_encoder = query_encoder
        except ValidationError:
            raise EsdistillError(f"unknown query encoder {query_encoder!r}",
                                 hint="auto, torch, onnx or onnx-int8") from None
    builders = project.systems(served=True)  # what applications query now: the alias
    if system not in builders:
        raise EsdistillError(f"unknown system {system!r}", hint=f"one of {', '.join(builders)}")
    engine = builders[system]()
    student = getattr(engine, "student", engine)
    if hasattr(student, "oversample"):
        try:
            student.filter = json.loads(filter) if filter else None
        except json.JSONDecodeError as e:
            raise EsdistillError(f"--filter is not valid JSON: {e}") from None
        student.oversample = oversample
        student.num_candidates = num_candidates or student.num_candidates
    if show_request:
        req = (engine.request(query, model_id=vector_builder) if vector_builder and system == "student"
               else engine.request(query))
        print_request(req)
    res = engine.search(query)
    docs = project.docs([d for d, _ in res.hits[:size]])
    table = Table(title=f"{system}: {query!r} — {res.wall_ms:.1f} ms wall, {res.took_ms:.0f} ms in Elasticsearch")
    for col in ("#", "id", "score", "title / text"):
        table.add_column(col)
    for i, (d, score) in enumerate(res.hits[:size], 1):
        doc = docs.get(d)
        table.add_row(str(i), d, f"{score:.4f}", (doc.full_text[:100] if doc else ""))
    Console().print(table)


def print_request(req: dict) -> None:
    """A request as an application sends it: the method and path, the body, and a curl line that sends it as is
    (to stdout, so it can be redirected; ``$ESDISTILL_ES_URL`` in the curl line)."""
    import json

    if "ndjson" in req:
        payload = "".join(json.dumps(line) + "\n" for line in req["ndjson"])
        kind = "application/x-ndjson"
    else:
        payload = json.dumps(req["body"], indent=2) + "\n"
        kind = "application/json"
    print(f"{req['method']} {req['path']}\n{payload}", end="")
    print(f"# curl -s -X {req['method']} \"$ESDISTILL_ES_URL{req['path']}\" -H 'Content-Type: {kind}' "
          f"--data-binary @- <<'EOF'\n{payload}EOF")
    if req.get("then"):
        print(f"# then, in the application: {req['then']}")


@app.command()
@friendly
def sweep(config: ConfigOpt, profile: ProfileOpt = None,
          index_types: Annotated[str, typer.Option(help="comma-separated index_options types")] =
          "hnsw,int8_hnsw,bbq_hnsw",
          num_candidates: Annotated[str, typer.Option(help="comma-separated values")] = "10,20,50,100,200",
          oversample: Annotated[float | None, typer.Option(help="rescore_vector oversample for quantized types")] = None,
          k: Annotated[int, typer.Option("--k", help="recall@k: the hits compared with exact search")] = 10):
    """Vector index settings: recall@k of approximate kNN vs exact search, and latency, on the test queries, on
    indices built as the served one is (not force-merged)."""
    _project(config, profile).sweep([t.strip() for t in index_types.split(",")],
                                    [int(n) for n in num_candidates.split(",")], oversample, k=k)


@app.command()
@friendly
def export(config: ConfigOpt, profile: ProfileOpt = None,
           upload: Annotated[bool, typer.Option(help="upload to the cluster's ML: Elasticsearch with eland (needs "
                                                     "ML nodes), OpenSearch to ml-commons (_predict checked)")] = False,
           start: Annotated[bool, typer.Option(help="start the deployment after upload")] = False,
           replace: Annotated[bool, typer.Option(help="replace a model with the same id")] = False,
           onnx: Annotated[bool, typer.Option("--onnx", help="instead: the deployed student as a portable query "
                                              "encoder for applications (ONNX fp32 + int8, tokenizer.json, "
                                              "manifest.json), e.g. for examples/node and examples/java")] = False,
           out: Annotated[Path | None, typer.Option(help="with --onnx: the folder to write (default: "
                                                    "<workdir>/encoders/<deploy key>)")] = None):
    """Trace the student to TorchScript with eland and verify it; --upload puts it into the cluster (OpenSearch:
    ml-commons, deployed and its _predict checked against sentence-transformers before it is kept). With --onnx,
    export the query encoder applications in any language use (the free license: no model in the cluster)."""
    project = _project(config, profile)
    if onnx:
        if upload or start or replace:
            raise EsdistillError("--onnx exports files for applications; --upload/--start/--replace are for the "
                                 "cluster's own model", hint="run them as two commands")
        info = project.export_encoder(out)
        print(Path(out) if out else project.workdir / "encoders" / info["deploy_key"])
        return
    project.export(upload, start, replace)


@kibana_app.command("import")
@friendly
def kibana_import(url: Annotated[str, typer.Option(envvar="ESDISTILL_KIBANA_URL", help="Kibana base URL")] =
                  "http://localhost:5601",
                  wait: Annotated[float, typer.Option(help="seconds to wait for Kibana to be ready (it answers "
                                                      "503 for a while after it starts)")] = 120.0):
    """Import the data view and dashboard (kibana/esdistill.ndjson); credentials from ESDISTILL_ES_*."""
    from .config import ClusterSettings
    from .results import SAVED_OBJECTS, import_saved_objects

    s = ClusterSettings()
    with console.status(f"waiting for Kibana at {url} …"):
        res = import_saved_objects(url, SAVED_OBJECTS, username=s.username,
                                   password=s.password.get_secret_value() if s.password else None,
                                   api_key=s.api_key.get_secret_value() if s.api_key else None, wait=wait)
    console.print(f"imported {res.get('successCount', 0)} saved objects into {url}; "
                  "open Dashboards → 'esdistill relevance'")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
