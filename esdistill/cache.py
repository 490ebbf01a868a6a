"""Stage outputs cached under a key of their inputs, so a rerun skips finished work.

Each stage writes into ``<workdir>/<stage>/<key>/`` where ``key`` hashes everything the output depends on
(dataset fingerprint, index, model, parameters, upstream keys). ``done.json`` is written last: a folder without
it is an interrupted run, whose partial files (chunks, checkpoints) the stage may resume from. ``done.json``
also records how long the stage took in the process that finished it, so a report written later (everything
else cached) still shows what each stage cost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .jsonutil import dumps, fingerprint


class StageCache:
    def __init__(self, workdir: Path, stage: str, inputs: dict[str, Any]):
        self.stage = stage
        self.inputs = inputs
        self.key = fingerprint(inputs)
        self.dir = Path(workdir) / stage / self.key  # made when something is written (asking for a key makes none)
        self.started = time.perf_counter()

    @property
    def done(self) -> bool:
        return (self.dir / "done.json").exists()

    def info(self) -> dict[str, Any]:
        return json.loads((self.dir / "done.json").read_text())

    def finish(self, **info: Any) -> dict[str, Any]:
        """Write the stage's record (``done.json``) and return it. Under data-parallel training (torchrun) only
        rank 0 writes; the others get the record they would have written."""
        from .distributed import is_main

        # seconds: from this cache object's creation (the stage's start) to now, in the process that finished
        record = {"stage": self.stage, "key": self.key, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "seconds": round(time.perf_counter() - self.started, 2), "inputs": self.inputs, **info}
        if not is_main():
            return record
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "done.json.tmp"
        tmp.write_text(dumps(record, indent=2))
        tmp.replace(self.dir / "done.json")
        return record

    def path(self, name: str) -> Path:
        """A file of this stage's output (its folder is made on first use)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / name
