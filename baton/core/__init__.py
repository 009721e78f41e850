"""Shared core of baton: types, model loading, the KV handoff format, sampling and stopping.

This package imports neither Ray nor gRPC, so both workers and the cluster can depend on it
(shared core <- workers <- cluster).
"""
