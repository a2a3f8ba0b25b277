"""ECHO: chest X-ray report drafting with one-step block diffusion (arXiv 2604.09450).

Import what you need from the submodules; this package imports nothing heavy at import time.
"""

__version__ = "0.6.4"
