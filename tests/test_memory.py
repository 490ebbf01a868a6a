"""``memory``: a training step is checked against the machine's memory before training, and a step too large for
it is computed a mini-batch at a time with the same gradients (GradCache)."""

import subprocess
import sys

import pytest
import torch

from esdistill.cache import StageCache
from esdistill.config import TrainConfig
from esdistill.errors import ConfigError
from esdistill.memory import available_bytes, bytes_per_text, cached_distill_loss, plan_step
from esdistill.models import load_bi_encoder, training_bf16
from esdistill.train import train_student

from .test_train import synthetic

PEAK = """
import resource, sys
from esdistill.models import load_bi_encoder
model = load_bi_encoder(sys.argv[1], max_length=128)
model.train()
n = int(sys.argv[2])
features = (getattr(model, "preprocess", None) or model.tokenize)([("word%d " % i) * 300 for i in range(n)])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model(features)["sentence_embedding"].pow(2).sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_the_estimate_covers_what_minilm_holds_through_a_training_step(minilm_path):
    """64 texts of 128 tokens forward and backward through MiniLM, in a fresh process (its peak resident memory is
    the step's, the weights' gradients included; the same step measured 17 to 51 MB a text from run to run, the
    lower figures where loading the model had already raised the peak): what the step holds a text is at most 10%
    above the estimate (the share of memory a step is not given covers that much; more, and a step it passes could
    be killed). How far above the measurement the estimate may lie is not asserted: the peak's noise is larger."""
    out = subprocess.run([sys.executable, "-c", PEAK, minilm_path, "64"], capture_output=True, text=True,
                         check=True)
    measured = float(out.stdout.strip().splitlines()[-1]) / 64
    estimate = bytes_per_text(load_bi_encoder(minilm_path), 128)
    assert measured <= 1.1 * estimate, (estimate, measured)
    assert bytes_per_text(load_bi_encoder(minilm_path), 256) > 2 * estimate  # attention grows with the square


def _features(model, rows: list[list[str]]):
    columns = list(zip(*rows, strict=True))
    prepare = getattr(model, "preprocess", None) or model.tokenize  # tokenize: sentence-transformers < 5.7
    return [prepare(list(c)) for c in columns]


def _grads(model, loss, features, labels):
    model.zero_grad(set_to_none=True)
    value = loss(features, labels)
    value.backward()
    return float(value), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["kl", "margin_mse"])
def test_a_mini_batched_step_has_the_gradients_of_the_whole_step(tiny_models, kind):
    try:
        from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss, MarginMSELoss
    except ImportError:  # sentence-transformers < 5.7
        from sentence_transformers.losses import DistillKLDivLoss, MarginMSELoss

    from esdistill.train import ScaledCosine

    model = load_bi_encoder(tiny_models["bi"], max_length=32)
    model.eval()  # no dropout: the two computations must agree exactly, not only in expectation
    queries, docs, scores = synthetic(n_q=5, n_d=4)
    rows = [[queries[q], *[docs[f"{q}d{i}"].full_text for i in range(4)]] for q in sorted(queries)]
    teacher = torch.tensor(scores.teacher.to_numpy(), dtype=torch.float32).reshape(5, 4)
    labels = teacher if kind == "kl" else teacher[:, :1] - teacher[:, 1:]
    inner = (DistillKLDivLoss(model, similarity_fct=ScaledCosine(20.0)) if kind == "kl"
             else MarginMSELoss(model, similarity_fct=ScaledCosine(20.0)))
    whole_value, whole = _grads(model, inner, _features(model, rows), labels)
    cached_value, cached = _grads(model, cached_distill_loss(inner, 2), _features(model, rows), labels)
    assert whole_value == pytest.approx(cached_value, rel=1e-5)
    assert whole.keys() == cached.keys() and whole
    for name, g in whole.items():
        assert torch.allclose(g, cached[name], rtol=1e-4, atol=1e-6), name


def test_a_step_is_mini_batched_only_when_it_does_not_fit(minilm_path):
    model = load_bi_encoder(minilm_path)
    per = bytes_per_text(model, 128)
    cfg = TrainConfig(batch_size=16, max_length=128)
    assert plan_step(cfg, model, width=10, judged=True, available=24 * 10**9).mini_batch is None  # 160 texts
    # every candidate of BM25's top 30 in a list: 16 x 32 texts, ~27 GB estimated, more than 70% of 24 GB
    whole = plan_step(cfg, model, width=32, judged=True, available=24 * 10**9)
    assert whole.mini_batch == 16 and whole.record["distill_step_bytes"] == 16 * 32 * per
    # a step may use 5 texts' memory: 5 rows of a column at a time
    small = cfg.model_copy(update={"memory_gb": 5.5 * per / 1e9, "batch_size": 8})
    assert plan_step(small, model, width=32, judged=False).mini_batch == 5
    assert plan_step(cfg.model_copy(update={"mini_batch": 3}), model, width=10, judged=True,
                     available=24 * 10**9).mini_batch == 3  # asked for: whatever fits


def test_a_step_that_cannot_fit_stops_before_training_naming_what_to_lower(minilm_path):
    model = load_bi_encoder(minilm_path)
    per = bytes_per_text(model, 128)
    cfg = TrainConfig(batch_size=16, max_length=128, memory_gb=20 * per / 1e9)
    with pytest.raises(ConfigError) as mnrl:  # 48 texts of judged triplets: MNRL is never mini-batched
        plan_step(cfg, model, width=10, judged=True)
    assert "train.batch_size (at most 6 fits)" in str(mnrl.value) and "MNRL" in str(mnrl.value)
    with pytest.raises(ConfigError) as off:
        plan_step(cfg.model_copy(update={"mini_batch": "off"}), model, width=10, judged=False)
    assert "train.mini_batch = 'auto'" in str(off.value) and "16 lists x 10 texts" in str(off.value)
    with pytest.raises(ConfigError, match="train.max_length"):
        plan_step(cfg.model_copy(update={"memory_gb": per / 2e9}), model, width=10, judged=False)


def test_training_runs_mini_batched_when_a_step_exceeds_its_memory(tmp_path, tiny_models):
    """A log-only student without the teacher's MNRL rows (teacher_positives = 0: no MNRL step) whose steps may
    hold two texts: it trains, a mini-batch at a time, and its record and log say so."""
    queries, docs, scores = synthetic(n_q=6, n_d=8)
    model = load_bi_encoder(tiny_models["bi"], max_length=32)
    half = training_bf16()  # bf16 training (a GPU, or a CPU with AMX) holds half the activations a text
    cfg = TrainConfig(base_model=tiny_models["bi"], epochs=1, batch_size=4, max_length=32, dev_fraction=0.0,
                      list_size=4, use_judgments=False, teacher_positives=0,
                      memory_gb=2.5 * bytes_per_text(model, 32, half_precision=half) / 1e9)
    lines: list[str] = []
    info = train_student(cfg, scores, queries, {}, lambda ids: {i: docs[i] for i in ids},
                         StageCache(tmp_path, "train", {"t": 1}), log=lines.append)
    assert info["memory"]["mini_batch"] == 2 and info["steps"] == 2  # 6 lists in batches of 4
    assert any("encodes 2 rows at a time (GradCache" in line for line in lines), lines
    plain = train_student(cfg.model_copy(update={"memory_gb": None}), scores, queries, {},
                          lambda ids: {i: docs[i] for i in ids}, StageCache(tmp_path, "train", {"t": 2}),
                          log=lambda m: None)
    assert plain["memory"]["mini_batch"] is None


def test_a_plan_left_by_a_run_killed_before_its_first_checkpoint_is_made_anew(tmp_path, tiny_models):
    """The kept plan is for resuming from a checkpoint (its rows must match what was trained); with no checkpoint,
    the step may have changed (here: mini-batched, at 4/3 the price a text), so the budget is measured again."""
    import json

    queries, docs, scores = synthetic(n_q=6, n_d=8)
    cfg = TrainConfig(base_model=tiny_models["bi"], epochs=1, batch_size=4, max_length=32, dev_fraction=0.0,
                      list_size=4, use_judgments=False, teacher_positives=0, budget_minutes=5.0,
                      mini_batch=2)
    cache = StageCache(tmp_path, "train", {"t": 1})
    stale = {"kept": [[1, 0]], "estimate_seconds": 1.0, "sampled_down": True, "passes_kept": 0.17, "passes": 1,
             "seconds_per_text": 123.0}
    cache.path("budget.json").write_text(json.dumps(stale))
    info = train_student(cfg, scores, queries, {}, lambda ids: {i: docs[i] for i in ids}, cache, log=lambda m: None)
    assert info["budget"]["seconds_per_text"] != 123.0 and info["examples"] == 6 and info["steps"] == 2
    assert info["budget"]["distill_cost"] == pytest.approx(4 / 3) and info["memory"]["mini_batch"] == 2


def test_memory_an_earlier_step_freed_is_still_counted_as_the_next_one_s():
    """About 2 GB in small blocks, held and freed: the allocator keeps most of it in the process, out of the
    system's available memory; a second training in the same process (the bench's seeds) must not see that memory
    as gone, or every later step is mini-batched for nothing."""
    before = available_bytes()
    held = [torch.ones(16, 1024) for _ in range(30_000)]
    del held
    assert available_bytes() > before - 0.5e9, (before, available_bytes())
