"""The console is the user's: esdistill's own messages, one rich progress bar per long stage, and nothing else.

:func:`quiet_libraries` (the CLI calls it unless ``--verbose``) silences what the libraries print on their own —
transformers' load reports and warnings, tqdm bars, the Hugging Face trainer's loss dicts, PyTorch's and other
Python warnings — while esdistill's own warnings (:class:`~esdistill.errors.EsdistillWarning`: data left out,
a model that cannot be pinned to a revision) are printed as one readable line each.
:class:`TrainerProgress` shows a training run as a rich progress bar instead of the trainer's own output.
"""

from __future__ import annotations

import logging
import os
import warnings

from rich.console import Console
from rich.progress import Progress
from rich.markup import escape

from .errors import EsdistillWarning

LIBRARY_LOGGERS = ("transformers", "sentence_transformers", "datasets", "huggingface_hub", "accelerate", "torch",
                   "elastic_transport", "elasticsearch", "optimum", "onnxruntime", "urllib3", "filelock", "numba")


def quiet_libraries(console: Console | None = None) -> None:
    """Silence the libraries' own output for the rest of the process; show esdistill's warnings on ``console``."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # the libraries keep their own verbosity switches besides the logging module's
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - not installed, or another version: nothing to silence
        pass
    try:
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()
    except Exception:  # noqa: BLE001
        pass
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", category=EsdistillWarning)
    out = console or Console(stderr=True)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, EsdistillWarning):
            from .distributed import is_main

            if is_main():  # under torchrun rank 0 speaks for every process
                out.print(f"[yellow]warning:[/] {escape(str(message))}")
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def trainer_progress(progress, description: str, estimate: float | None = None, steps=None):
    """A Hugging Face ``TrainerCallback`` that advances one rich progress task, step by step, and keeps the
    trainer's own progress output (tqdm, loss dicts) away: pass it to the trainer with ``disable_tqdm=True``
    and remove its ``PrinterCallback``. None without a progress display. ``estimate``: the seconds the training is
    expected to take (an :class:`EstimatingProgress` shows it with the bar). ``steps(state)``: the steps the
    training is now expected to run (a budget's clock: :func:`esdistill.budget.budget_guard`), the bar's total
    while it runs; it ends at the step the training ended at."""
    if progress is None:
        return None
    from transformers import TrainerCallback

    class TrainerProgress(TrainerCallback):
        task = None

        def on_train_begin(self, args, state, control, **kwargs):
            extra = {"estimate": estimate} if estimate is not None else {}
            self.task = progress.add_task(description, total=state.max_steps, completed=state.global_step, **extra)

        def on_step_end(self, args, state, control, **kwargs):
            total = steps(state) if steps is not None else state.max_steps
            progress.update(self.task, completed=state.global_step, total=max(total, state.global_step))

        def on_train_end(self, args, state, control, **kwargs):
            if self.task is not None:
                progress.update(self.task, completed=state.global_step, total=state.global_step)

    return TrainerProgress()


def attach_progress(trainer, progress, description: str, estimate: float | None = None, steps=None) -> None:
    """Route ``trainer``'s progress to ``progress`` (a rich Progress) and drop its printed log dicts.
    ``estimate``: the training's expected seconds, said with the bar; ``steps``: see :func:`trainer_progress`."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    callback = trainer_progress(progress, description, estimate, steps)
    if callback is not None:
        trainer.add_callback(callback)


class EstimatingProgress(Progress):
    """A rich :class:`~rich.progress.Progress` that says how long each task will take, before it takes it.

    A task added with an ``estimate`` field (seconds, e.g. the training's from
    :func:`esdistill.budget.plan_training`) shows it from the start. Any other task with a total is timed on its
    first batches: its clock starts at its first update after the first burst of updates (the burst: updates
    less than ``burst`` seconds apart, e.g. work skipped because a cache had it; the gap after it may pay for
    loading a model), and once ``measure`` seconds of work have passed, its total wall time is estimated as the
    time so far plus what is left at the rate measured since. The estimate is then frozen into the task's
    description (``≈ 3.5 min``) and passed to ``on_estimate(description, seconds)`` (the project keeps it for the
    report's stage table). A task that ends sooner gets none."""

    def __init__(self, *columns, on_estimate=None, burst: float = 0.05, measure: float = 2.0, **kwargs):
        super().__init__(*columns, **kwargs)
        self.on_estimate = on_estimate
        self.burst = burst
        self.measure = measure
        self._ref: dict = {}  # task id -> [time, completed, frozen] of the point the rate is measured from

    def add_task(self, description, start=True, total=100.0, completed=0, visible=True, **fields):
        estimate = fields.pop("estimate", None)
        task_id = super().add_task(description, start=start, total=total, completed=completed, visible=visible,
                                   **fields)
        if estimate is not None:
            self._said(task_id, float(estimate))
        else:
            self._ref[task_id] = None  # no update yet
        return task_id

    def _said(self, task_id, seconds: float) -> None:
        from .budget import fmt_seconds

        self._ref.pop(task_id, None)
        with self._lock:
            task = self._tasks[task_id]
            base = task.description
            task.description = f"{base} (≈ {fmt_seconds(seconds)})"
        if self.on_estimate is not None:
            self.on_estimate(base, seconds)

    def _check(self, task_id) -> None:
        if task_id not in self._ref:
            return  # estimated already, or added with one
        with self._lock:
            task = self._tasks[task_id]
            total, done, started = task.total, task.completed, task.start_time
        now = self.get_time()
        ref = self._ref[task_id]
        if ref is None or not ref[2]:
            # the first burst slides the reference along; the first update after it starts the clock (what came
            # between them, a model's loading for one, is not measured)
            self._ref[task_id] = [now, done, ref is not None and now - ref[0] >= self.burst]
            return
        if (now - ref[0] >= self.measure and done > ref[1] and total and done < total and started is not None):
            self._said(task_id, (now - started) + (total - done) * (now - ref[0]) / (done - ref[1]))

    def update(self, task_id, **kwargs):
        super().update(task_id, **kwargs)
        self._check(task_id)

    def advance(self, task_id, advance=1):
        super().advance(task_id, advance)
        self._check(task_id)
