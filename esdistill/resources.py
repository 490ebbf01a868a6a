"""Files esdistill reads at run time, found where they are installed, so a wheel works wherever it runs: the
JSON bodies of ``mappings/``, Kibana's saved objects (``kibana/``), the example configs (``examples/``) and the
vendored SciFact (``datasets/``).

The repository keeps each at its top, the one place people edit them; ``pyproject.toml`` builds those folders
into the wheel as package data of ``esdistill`` (``esdistill/mappings/…``). So a file is looked up in the
installed package first, and in the source checkout beside it (an editable install, a clone) second.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PACKAGES = ("mappings", "kibana", "examples", "datasets")


def resource_dir(package: str) -> Path:
    """The folder of ``package`` (one of :data:`PACKAGES`): inside the installed package, else the checkout's."""
    if package not in PACKAGES:
        raise ValueError(f"unknown resource folder {package!r}")
    installed = Path(str(files("esdistill"))) / package
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / package


def resource(package: str, name: str) -> Path:
    """The file ``name`` of ``package`` (``mappings``, ``kibana``, ``examples``, ``datasets``)."""
    return resource_dir(package) / name
