"""Throughput of the heavy stages against the same model's own peak on this machine.

    .venv/bin/python bench/throughput.py [--pairs 1024] [--docs 1024] [--max-length 128]

* teacher scoring (pairs/s): the way the ``teacher`` stage scores (chunks of 32 queries' candidates, batch 64,
  sentence-transformers sorts each call's inputs by length) vs the best batch size on the same pairs scored in
  one length-sorted call, vs the same pairs in random order without length sorting (what bucketing saves).
* corpus embedding (docs/s): the way ``deploy`` embeds (bulk batches of 256 documents, encode batch 32) vs the
  best encode batch size over the same documents in one length-sorted call.
* on a GPU, the same in fp32 and bf16 (``--dtype``).

Pairs are real: SciFact train claims × their BM25 top-30 from the bench cache if there is one, else claims ×
random abstracts. Prints a table; writes ``bench/results/throughput-<hardware>.json``.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    DEFAULT_OUT, DEFAULT_WORKDIR, ROOT, DocsOpt, MaxLengthOpt, OutOpt, PairsOpt, hardware, prepare_env, write_result,
)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(
    pairs_n: PairsOpt = 1024,
    docs_n: DocsOpt = 1024,
    max_length: MaxLengthOpt = 128,
    dtype: Annotated[str, typer.Option(help="fp32 | bf16 | fp16 (GPU)")] = "fp32",
    batch_sizes: Annotated[str, typer.Option(help="batch sizes tried for the peak")] = "16,32,64,128",
    out: OutOpt = DEFAULT_OUT,
):
    prepare_env()
    import pandas as pd
    import torch

    from esdistill.data import load_corpus, load_qrels, load_queries, resolve_beir
    from esdistill.models import load_bi_encoder, load_cross_encoder

    root = resolve_beir(ROOT / "datasets" / "scifact.tar.xz", ROOT / ".esdistill" / "datasets")
    corpus = load_corpus(root / "corpus.jsonl")
    queries = load_queries(root / "queries.jsonl")
    train = load_qrels(root / "qrels" / "train.tsv")
    rng = random.Random(0)
    cands = sorted((DEFAULT_WORKDIR / "candidates").glob("*/candidates.parquet"))
    if cands:
        frame = pd.read_parquet(cands[0])
        frame = frame[frame["rank"] <= 30].head(pairs_n)
        pairs = [(queries[q], corpus[d].full_text) for q, d in zip(frame.qid, frame.docid, strict=True)]
        source = "train claims × BM25 top-30 (bench cache)"
    else:
        ids = list(corpus)
        pairs = [(queries[q], corpus[rng.choice(ids)].full_text) for q in list(train)[: pairs_n // 30 + 1]
                 for _ in range(30)][:pairs_n]
        source = "train claims × random abstracts"
    docs = [corpus[d].full_text for d in sorted(corpus)[:docs_n]]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = [int(b) for b in batch_sizes.split(",")]
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    rows = []

    ce = load_cross_encoder("minilm", max_length=max_length, num_labels=1, device=device)
    ce.model.to(torch_dtype)
    ce.predict(pairs[:64], batch_size=64, show_progress_bar=False)  # warm-up
    per_query = 30
    stage = _timed(lambda: [ce.predict(pairs[i : i + 32 * per_query], batch_size=64, show_progress_bar=False)
                            for i in range(0, len(pairs), 32 * per_query)])
    rows.append({"what": "teacher scoring", "how": "as the teacher stage: chunks of 32 queries, batch 64",
                 "per_s": len(pairs) / stage})
    for b in sizes:
        s = _timed(lambda b=b: ce.predict(pairs, batch_size=b, show_progress_bar=False))
        rows.append({"what": "teacher scoring", "how": f"one length-sorted call, batch {b}", "per_s": len(pairs) / s})
    shuffled = pairs[:]
    rng.shuffle(shuffled)
    tok, model = ce.tokenizer, ce.model

    def unsorted(b=64):
        with torch.inference_mode():
            for i in range(0, len(shuffled), b):
                enc = tok([p[0] for p in shuffled[i : i + b]], [p[1] for p in shuffled[i : i + b]], padding=True,
                          truncation=True, max_length=max_length, return_tensors="pt").to(device)
                model(**enc)
    rows.append({"what": "teacher scoring", "how": "random order, no length sorting, batch 64",
                 "per_s": len(pairs) / _timed(unsorted)})

    bi = load_bi_encoder("minilm", max_length=max_length, device=device)
    bi.to(torch_dtype)
    bi.encode(docs[:64], batch_size=32, show_progress_bar=False)
    stage = _timed(lambda: [bi.encode(docs[i : i + 256], batch_size=32, show_progress_bar=False)
                            for i in range(0, len(docs), 256)])
    rows.append({"what": "corpus embedding", "how": "as the deploy stage: bulk batches of 256, encode batch 32",
                 "per_s": len(docs) / stage})
    for b in sizes:
        s = _timed(lambda b=b: bi.encode(docs, batch_size=b, show_progress_bar=False))
        rows.append({"what": "corpus embedding", "how": f"one length-sorted call, batch {b}", "per_s": len(docs) / s})

    for what in ("teacher scoring", "corpus embedding"):
        group = [r for r in rows if r["what"] == what]
        peak = max(r["per_s"] for r in group)
        for r in group:
            r["share_of_peak"] = r["per_s"] / peak
    unit = {"teacher scoring": "pairs/s", "corpus embedding": "docs/s"}
    hw = hardware()
    print(f"| stage | how | throughput | share of this machine's peak |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['how']} | {r['per_s']:.1f} {unit[r['what']]} | {r['share_of_peak']:.0%} |")
    write_result(out, f"throughput-{hw['label']}{'' if dtype == 'fp32' else '-' + dtype}", {
        "rows": rows, "pairs": len(pairs), "docs": len(docs), "pair_source": source, "max_length": max_length,
        "dtype": dtype, "device": device, "hardware": hw})


if __name__ == "__main__":
    typer.run(main)
