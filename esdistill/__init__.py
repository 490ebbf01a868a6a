"""esdistill: turn a BM25 → cross-encoder Elasticsearch pipeline into one bi-encoder served by kNN.

Read :mod:`esdistill.stages` first: the table of stages and one module per stage (its cache key, its run, its part
offline and in bundles), each driving the libraries beside this file (:mod:`~esdistill.indexing`,
:mod:`~esdistill.candidates`, :mod:`~esdistill.teacher`, :mod:`~esdistill.train`, :mod:`~esdistill.deploy`,
:mod:`~esdistill.evaluate`, ...). :mod:`~esdistill.pipeline` is the context they run in (:class:`Project`);
:mod:`~esdistill.cli` is the CLI over it.
"""

from .config import ES_VERSION, SUPPORTED_ES_VERSIONS, RunConfig, build_config, load_config
from .errors import ClusterError, ConfigError, EsdistillError, InputError, ModelError

__version__ = "0.1.0"


def __getattr__(name):  # keep `import esdistill` light: torch loads only when the pipeline is used
    if name == "Project":
        from .pipeline import Project

        return Project
    raise AttributeError(name)


__all__ = ["ES_VERSION", "SUPPORTED_ES_VERSIONS", "RunConfig", "build_config", "load_config", "Project", "EsdistillError", "InputError",
           "ConfigError", "ClusterError", "ModelError"]
