"""Model runtimes: the one seam between baton's batches and a model's forward pass.

``hf`` runs the transformers model classes (any decoder-only architecture; also the correctness
oracle). Both workers call a runtime through ``ModelRuntime`` (``base.py``) and never the model
directly, so a faster runtime for an architecture slots in without touching the batching.
"""
