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


def trainer_progress(progress, description: str):
    """A Hugging Face ``TrainerCallback`` that advances one rich progress task, step by step, and keeps the
    trainer's own progress output (tqdm, loss dicts) away: pass it to the trainer with ``disable_tqdm=True``
    and remove its ``PrinterCallback``. None without a progress display."""
    if progress is None:
        return None
    from transformers import TrainerCallback

    class TrainerProgress(TrainerCallback):
        task = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.task = progress.add_task(description, total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            progress.update(self.task, completed=state.global_step)

    return TrainerProgress()


def attach_progress(trainer, progress, description: str) -> None:
    """Route ``trainer``'s progress to ``progress`` (a rich Progress) and drop its printed log dicts."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    callback = trainer_progress(progress, description)
    if callback is not None:
        trainer.add_callback(callback)
