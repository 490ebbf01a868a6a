"""Package data of esdistill (`esdistill.datasets`, read with importlib.resources): see README.md beside this file and esdistill/resources.py."""
