"""Package data of esdistill (`esdistill.mappings`, read with importlib.resources): see README.md beside this file and esdistill/resources.py."""
