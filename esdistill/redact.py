"""The one place that removes credentials from what esdistill shows or writes.

A cluster URL may carry them (``https://user:password@host:9200``: the Elasticsearch client turns the user info
into Basic auth), and such a URL reaches config dumps (report.json, bench result files), error messages and
documents. :func:`redact` replaces the user info of every URL in a string — or in every string of a JSON-like
value — with ``**********``, the mark pydantic gives a secret field. Everything written or printed that may hold
a URL goes through it: :class:`~esdistill.config.ClusterConfig`'s JSON dump, every
:class:`~esdistill.errors.EsdistillError`'s message and hint, ``report.json``, the results index's documents and
the bench scripts' result files.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "**********"

#: ``scheme://userinfo@``: the user info runs to the last ``@`` before the host (a password may hold a raw ``@``)
#: and holds no ``/`` or whitespace (RFC 3986: those end the authority).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]*(?:@[^/\s@]*)*@")


def redact(value: Any) -> Any:
    """``value`` with the credentials of every URL in it replaced by ``**********``: a string, or a dict, list or
    tuple whose strings (keys too) are redacted recursively; anything else is returned as it is."""
    if isinstance(value, str):
        return _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", value) if "@" in value else value
    if isinstance(value, dict):
        return {redact(k): redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value
