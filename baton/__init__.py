"""Generated gRPC stubs of baton's public API (protos/baton/v1). Regenerate with protos/generate.py."""
