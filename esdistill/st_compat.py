"""Saved sentence-transformers models across its versions: where its module and loss classes are
(:func:`st_modules`, :func:`st_losses`), and :func:`make_loadable`. A leaf that :mod:`esdistill.models` and :mod:`esdistill.model_source` both use."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ModelError


def st_modules(*names: str):
    """sentence-transformers module classes by name, from where this version keeps them (5.7 moved them)."""
    try:
        from sentence_transformers.sentence_transformer import modules as mod
    except ImportError:  # sentence-transformers < 5.7
        from sentence_transformers import models as mod
    return tuple(getattr(mod, n) for n in names)


def st_losses(*names: str):
    """sentence-transformers loss classes by name, from where this version keeps them (5.7 moved them)."""
    try:
        from sentence_transformers.sentence_transformer import losses as mod
    except ImportError:  # sentence-transformers < 5.7
        from sentence_transformers import losses as mod
    return tuple(getattr(mod, n) for n in names)


def make_loadable(folder: Path | str) -> list[str]:
    """Point a saved sentence-transformers model's ``modules.json`` at module classes this installation has.

    sentence-transformers moves its module classes between versions (``…models.Normalize`` in 2–5.6,
    ``…sentence_transformer.modules.normalize`` in 5.7, ``…base.modules.normalize`` in 6), and a model saved by
    one names classes the other cannot import. Each type that does not import here is replaced by the class of
    the same name that does. Returns the types rewritten."""
    import importlib

    path = Path(folder) / "modules.json"
    if not path.exists():
        return []
    modules = json.loads(path.read_text())
    changed = []
    for m in modules:
        module, _, cls = m["type"].rpartition(".")
        try:
            getattr(importlib.import_module(module), cls)
            continue
        except (ImportError, AttributeError):
            pass
        try:
            (found,) = st_modules(cls)
        except AttributeError:
            import sentence_transformers.base.modules as base

            found = getattr(base, cls, None)
            if found is None:
                raise ModelError(f"{path}: module {m['type']!r} has no counterpart in this sentence-transformers",
                                 hint="load the model with the sentence-transformers version that saved it") from None
        m["type"] = f"{found.__module__}.{found.__qualname__}"
        changed.append(m["type"])
    if changed:
        path.write_text(json.dumps(modules, indent=2))
    return changed
