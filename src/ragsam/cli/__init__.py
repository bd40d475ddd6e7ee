"""The ``ragsam`` command line: thin wrappers over the Python API."""
