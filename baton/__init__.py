"""baton: disaggregated prefill/decode LLM serving on Ray with BATON dynamic re-batching.

Subpackages: ``baton.core`` (types, model loading, KV handoff, sampling, stopping, policy, config;
no Ray, no gRPC), ``baton.v1`` (generated gRPC stubs of protos/baton/v1), ``baton.bench`` (the
benchmark harness behind ``baton bench``). ``baton.engine`` is the in-process engine, ``baton.cli``
the ``baton`` command, ``baton.client`` the gRPC client. The Ray side lives in the top-level
packages ``cluster`` (router, launcher, gRPC server), ``prefill_worker`` and ``decode_worker``.
"""
