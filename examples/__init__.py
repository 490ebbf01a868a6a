"""Package data of esdistill (`esdistill.examples`): the example configs, read with importlib.resources (esdistill/resources.py)."""
