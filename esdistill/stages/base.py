"""What every stage's work shares: the project it runs in (:class:`~esdistill.pipeline.Project`, the context:
config, client, dataset, console, caches)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..cache import StageCache
    from ..pipeline import Project


class StageWork:
    """One stage's (or a few related stages') work over a project: its cache keys, its run, its offline
    variant. Other stages' work is reached through the project (``self.p.<method>``, :meth:`Project.part`)."""

    def __init__(self, project: Project):
        self.p = project

    @property
    def cfg(self):
        return self.p.cfg

    # The hooks below are what ``run --offline`` and bundles ask of every stage (esdistill.stages, in the order of
    # WORK); a stage that has no part in them keeps these defaults. They are not handed to Project.

    def run_offline(self) -> dict[str, Any]:
        """``run --offline``: this stage's work on a machine without the cluster ({what: info record})."""
        return {}

    def bundle_out(self) -> list[StageCache]:
        """``bundle export``, where the cluster is: this stage's caches the offline side reads (made first where
        missing)."""
        return []

    def bundle_back(self, weights: tuple[str, ...], vectors: tuple[str, ...] | None) -> list[tuple[Any, bool]]:
        """``bundle pack``, offline: this stage's caches that travel back, each with whether its model weights
        travel too (``weights``: ``student``, ``judgments``, ``teacher``; ``vectors``: the served models whose
        vectors travel, None: all). A cache that is None or unfinished is skipped."""
        return []


def model_available(path: str) -> bool:
    """Whether a model can be loaded here: a folder that exists, or a name (hub id, ``minilm``) rather than the
    path of a folder that stayed on another machine."""
    return Path(path).exists() or not Path(path).is_absolute()
