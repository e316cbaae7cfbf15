"""The benchmarks: scripts that measure speed and quality and print their figures (benchmarks/README.md
lists them). Run each from the repository root as ``python -m benchmarks.NAME``; the modules whose name
starts with ``_`` are the helpers they share. Nothing here is imported by the product, and this file
imports nothing: annif_peer.py runs in Annif's own virtualenv."""
