"""Files esdistill reads at run time, found as package data, so an installed wheel has them wherever it runs:
the JSON bodies of ``mappings/``, Kibana's saved objects (``kibana/``), the example configs (``examples/``) and
the vendored SciFact (``datasets/``). The repository keeps each at its top, the one place people edit them;
``pyproject.toml`` maps those folders into the package (``esdistill.mappings`` …) — in a wheel and in an
editable install alike."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def resource(package: str, name: str) -> Path:
    """The file ``name`` of ``esdistill.<package>`` (``mappings``, ``kibana``, ``examples``, ``datasets``)."""
    return Path(str(files(f"esdistill.{package}").joinpath(name)))


def resource_dir(package: str) -> Path:
    """The folder of ``esdistill.<package>``, for listing it."""
    marker = {"mappings": "bm25_index.json", "kibana": "esdistill.ndjson", "examples": "scifact.toml",
              "datasets": "scifact.tar.xz"}[package]
    return resource(package, marker).parent
