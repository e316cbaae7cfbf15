"""Thin Ray Serve deployments over the core (one file per stage), the HTTP ingress, and the app builder.

    Ingress (FastAPI) ─▶ Encoder ─▶ GraphRecall (one deployment per shard) ─▶ Generator ─▶ Calibrator

`deployments.app:build_app` is the import path serve_config.yaml names.
"""
