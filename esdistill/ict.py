"""A teacher from the corpus alone: a cross-encoder fitted on inverse-cloze pairs (``teacher.fit.source``).

Inverse cloze (Lee et al., 2019, "Latent Retrieval for Weakly Supervised Open Domain QA"): a sentence is taken
out of a document and becomes the query; the rest of that document is its positive; the documents BM25 ranks
highest for the sentence (other than its own) are its hard negatives. The fit needs no judgments and never
sees a query, so every training query it labels — judged or not — is held out by construction: there is
nothing to cross-fit, and its label quality on the judged training queries is an honest estimate.

Two stages:

* :func:`draw_pairs` (``ict-pairs``, needs the cluster): the sentences, the masked positives and BM25's
  negatives, in ``pairs.parquet``.
* :func:`fit_ict` (``teacher-ict``, no cluster): the listwise fit (the positive against its BM25 negatives and
  in-batch negatives), in ``model-full/``.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from .cache import StageCache
from .config import CorpusFitConfig
from .data import Doc, pseudo_queries

#: query ids of inverse-cloze sentences: ``ict-<docid>``
PREFIX = "ict-"
MODEL = "model-full"


def sentences(docs: Iterable[Doc], cfg: CorpusFitConfig, avoid: Iterable[str] = ()) -> dict[str, str]:
    """``cfg.pairs`` sentences, one per document, chosen by a stable hash (the same corpus always gives the same
    sentences); ``ict-<docid>`` → sentence. Sentences equal to a query in ``avoid`` (the test queries) are
    skipped."""
    drawn = pseudo_queries(docs, cfg.pairs, avoid=avoid, min_words=cfg.min_words, max_words=cfg.max_words,
                           salt=f"ict:{cfg.seed}")
    return {PREFIX + q.removeprefix("pq-"): t for q, t in drawn.items()}


def masked(doc: Doc, sentence: str) -> str:
    """The rest of the document: its full text with ``sentence`` taken out (once)."""
    return Doc(doc.id, doc.title, " ".join(doc.text.replace(sentence, " ", 1).split())).full_text


def draw_pairs(
    docs: Iterable[Doc],
    lookup: Callable[[list[str]], dict[str, Doc]],
    search: Callable[[dict[str, str]], dict[str, list[tuple[str, float]]]],
    cfg: CorpusFitConfig,
    cache: StageCache,
    avoid: Iterable[str] = (),
) -> dict[str, Any]:
    """Write ``pairs.parquet``: ``qid, query, docid, positive, negatives`` (docids, BM25 order sampled from ranks
    1..``negative_depth`` without the source document). ``search`` is BM25 over the index (qid → hits).
    Sentences whose BM25 list holds no other document are counted and left out."""
    if cache.done:
        return {**cache.info(), "cached": True}
    drawn = sentences(docs, cfg, avoid)
    hits = search(drawn)
    source = lookup([q.removeprefix(PREFIX) for q in drawn])
    rng = random.Random(cfg.seed)
    rows, no_negatives = [], 0
    for qid, sentence in drawn.items():
        docid = qid.removeprefix(PREFIX)
        pool = [d for d, _ in hits.get(qid, [])[: cfg.negative_depth + 1] if d != docid][: cfg.negative_depth]
        if not pool or docid not in source:
            no_negatives += 1
            continue
        negs = rng.sample(pool, min(cfg.negatives, len(pool)))
        rows.append((qid, sentence, docid, masked(source[docid], sentence), negs,
                     int(any(d == docid for d, _ in hits.get(qid, [])[:1]))))
    frame = pd.DataFrame(rows, columns=["qid", "query", "docid", "positive", "negatives", "source_first"])
    frame.to_parquet(cache.path("pairs.parquet"), index=False)
    return cache.finish(drawn=len(drawn), pairs=len(frame), without_negatives=no_negatives,
                        source_ranked_first=float(frame.source_first.mean()) if len(frame) else None,
                        output="pairs.parquet")


def listwise_frame(pairs: pd.DataFrame, lookup: Callable[[list[str]], dict[str, Doc]],
                   negatives: int) -> pd.DataFrame:
    """One row per sentence: ``query, positive, negative_0..n-1`` (texts); short lists repeat their negatives."""
    texts = lookup(sorted({d for negs in pairs.negatives for d in negs}))
    rows = []
    for r in pairs.itertuples(index=False):
        negs = [texts[d].full_text for d in r.negatives if d in texts]
        if not negs:
            continue
        rows.append({"query": r.query, "positive": r.positive,
                     **{f"negative_{i}": negs[i % len(negs)] for i in range(negatives)}})
    return pd.DataFrame(rows)


def fit_ict(pairs: pd.DataFrame, lookup: Callable[[list[str]], dict[str, Doc]], cfg: CorpusFitConfig,
            base_model: str, cache: StageCache, log: Callable[[str], None] = print, progress=None) -> dict[str, Any]:
    """Fit the cross-encoder on the sentences' listwise rows; ``model-full/`` is the teacher."""
    from .teacher import COMPLETE, train_listwise

    if cache.done:
        return {**cache.info(), "cached": True}
    out = cache.path(MODEL)
    if not (out / COMPLETE).exists():
        shutil.rmtree(out, ignore_errors=True)
        rows = listwise_frame(pairs, lookup, cfg.negatives)
        if rows.empty:
            raise ValueError("no inverse-cloze pairs to fit on: no document has a sentence of "
                             f"{cfg.min_words}-{cfg.max_words} words with BM25 neighbours")
        log(f"teacher fit [corpus]: {len(rows)} inverse-cloze sentences, {cfg.negatives} BM25 negatives each "
            f"+ {cfg.in_batch_negatives} in-batch")
        train_listwise(rows, cfg, base_model, out, progress, "corpus")
    return cache.finish(models={"full": str(out)}, folds={}, judged_queries=0, sentences=len(pairs))
