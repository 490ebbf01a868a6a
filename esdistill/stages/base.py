"""What every stage's work shares: the project it runs in (:class:`~esdistill.pipeline.Project`, the context:
config, client, dataset, console, caches)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..pipeline import Project


class StageWork:
    """One stage's (or a few related stages') work over a project: its cache keys, its run, its offline
    variant. Other stages' work is reached through the project (``self.p.<method>``, :meth:`Project.part`)."""

    def __init__(self, project: Project):
        self.p = project

    @property
    def cfg(self):
        return self.p.cfg


def model_available(path: str) -> bool:
    """Whether a model can be loaded here: a folder that exists, or a name (hub id, ``minilm``) rather than the
    path of a folder that stayed on another machine."""
    return Path(path).exists() or not Path(path).is_absolute()
