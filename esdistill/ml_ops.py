"""A check eland does not make: would the target cluster's ML node accept this TorchScript model?

Elasticsearch's ``pytorch_inference`` (elastic/ml-cpp) refuses a model whose graph holds an operation it does not
support, at deployment time, after the upload: ``Model graph does not match any supported architecture.
Unrecognised operations: …``. What it checks depends on its version (the facts, read from ml-cpp's source,
ship with esdistill in ``esdistill/reference/ml-cpp-torchscript-ops.json``):

* 9.1.0 – 9.3.x (and 8.19.0 – 8.19.19): only ``aten::from_file`` and ``aten::save`` are refused, in the top-level
  nodes of ``forward``;
* from 9.4.0 (and 8.19.20): every method of the module, inlined and walked into every block, must use only the
  allowlisted operations (111), and a forbidden list is refused outright.

:func:`check_model` applies the rules of a version to a traced model and refuses it, naming the operations,
before anything is uploaded.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ClusterError, ModelError

REFERENCE = Path(__file__).resolve().parent / "reference" / "ml-cpp-torchscript-ops.json"


@cache
def reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text())


def _version(v: str) -> tuple[int, int, int]:
    parts = [int(x) for x in re.findall(r"\d+", v)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def rules_for(version: str) -> dict[str, Any] | None:
    """The rules ``version``'s ML node applies: ``{"allowlist": set | None, "forbidden": set, "scope":
    "forward" | "all", "rule": …}``; None before 8.19.0 / 9.1.0 (no check at all)."""
    v = _version(version)
    ref = reference()
    by = {r["versions"]: r for r in ref["by_version"]}

    def rule(key: str) -> dict[str, Any]:
        r = by[key]
        allow = set(ref[r["allowlist"]]) if r["allowlist"] else None
        return {"allowlist": allow, "forbidden": set(r["forbidden"]),
                "scope": "forward" if r["allowlist"] is None else "all", "rule": key}

    old, mid, new = (r["versions"] for r in ref["by_version"])
    if v >= (9, 4, 5) or (8, 19, 20) <= v < (9, 0, 0):
        out = rule(new)
        if v >= (9, 6, 0):
            out["note"] = f"rules read from ml-cpp up to 9.5; {version} may differ"
        return out
    if v >= (9, 4, 0):
        return rule(mid)
    if v >= (9, 1, 0) or (8, 19, 0) <= v < (9, 0, 0):
        return rule(old)
    return None


def graph_ops(module, scope: str = "all") -> set[str]:
    """The operations of a ``torch.jit.ScriptModule``: of every method, inlined, into every block (``all``), or of
    the top-level nodes of ``forward`` alone (``forward``) — as ml-cpp walks them."""
    import torch

    def walk(block, out: set[str]) -> None:
        for node in block.nodes():
            out.add(node.kind())
            for sub in node.blocks():
                walk(sub, out)

    if scope == "forward":
        return {node.kind() for node in module.forward.graph.nodes()}
    ops: set[str] = set()
    for name in module._c._method_names():
        graph = getattr(module, name).graph.copy()
        torch._C._jit_pass_inline(graph)
        walk(graph, ops)
    return ops


def check_model(model_path: Path | str, version: str) -> dict[str, Any]:
    """Load a traced model (``.pt``) and check it against ``version``'s rules; :class:`ModelError` naming the
    operations when the cluster would refuse it. Returns what was checked."""
    import torch

    rules = rules_for(version)
    if rules is None:
        return {"version": version, "checked": False, "why": "no operation check before 8.19.0 / 9.1.0"}
    module = torch.jit.load(str(model_path), map_location="cpu")
    ops = graph_ops(module, rules["scope"])
    forbidden = sorted(ops & rules["forbidden"])
    unlisted = sorted(ops - rules["allowlist"] - rules["forbidden"]) if rules["allowlist"] is not None else []
    if forbidden or unlisted:
        what = "; ".join(x for x in (f"forbidden: {', '.join(forbidden)}" if forbidden else "",
                                     f"not on its allowlist: {', '.join(unlisted)}" if unlisted else "") if x)
        raise ModelError(f"Elasticsearch {version}'s ML node would refuse this model ({what})",
                         hint="the student must be a BERT-style encoder with mean pooling as eland traces it; see "
                              f"esdistill/reference/ml-cpp-torchscript-ops.json ({rules['rule']})")
    return {"version": version, "checked": True, "rule": rules["rule"], "ops": sorted(ops), **(
        {"note": rules["note"]} if "note" in rules else {})}


def require_ml(client, url: str = "the cluster") -> dict:
    """``GET _ml/info`` or a clear refusal: the local test build has no ML, the docker stack has."""
    from elasticsearch import exceptions as es_exc

    try:
        return client.ml.info().body
    except (es_exc.BadRequestError, es_exc.NotFoundError, es_exc.ApiError) as e:
        raise ClusterError(
            f"{url} has no machine learning ({getattr(e, 'message', e)}); a trained model cannot be uploaded there",
            hint="use the full stack in docker/ (ML under a trial license) or an Elastic cluster with ML nodes",
        ) from None
