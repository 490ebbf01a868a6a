"""JSON helpers, a leaf every module may import: :func:`fingerprint` (the cache keys' hash) and JSON as strict
parsers read it: ``NaN`` and infinities (a p-value of two identical runs, a share of gain
that is undefined) are written as ``null``, never as the ``NaN`` token Python's ``json`` emits by default."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (also numpy scalars) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:  # numpy scalar
        return finite(obj.item())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses to write NaN: non-finite numbers become null first."""
    kwargs.setdefault("default", str)
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def fingerprint(obj: Any) -> str:
    """Stable short hash of JSON-able inputs — the cache key of a stage."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
