"""metis: a command-line toolkit and Python API for the Metis / MaskGCT speech models."""

__version__ = "0.1.0"
