"""The run directory: its file format and atomic writes, the run lock, checkpoints and the catalog
of runs under a folder.
"""
