"""The machine a run measured on, as reports record it."""

from __future__ import annotations

import platform
from typing import Any


def environment_label() -> str:
    """This machine in a few words: the GPU's name, else its CPU count."""
    import os

    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"


def environment() -> dict[str, Any]:
    import os

    import elasticsearch
    import sentence_transformers
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
            "elasticsearch_client": elasticsearch.__versionstr__, "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "machine": platform.machine(), "system": platform.system()}
