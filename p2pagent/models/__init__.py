"""Model sharing: manifests, a content-addressed chunk store, multi-source transfer.

Modules, one concept each:

- ``manifest``: what a model version is (name, format, chunk hashes) and its canonical id;
- ``store``: chunks on disk by SHA-256, atomic writes, completeness, assembly, GC (blocking
  I/O, run in a thread by the driver);
- ``publish``: turns a client-streamed upload into chunks and, only on success, a manifest;
- ``transfer``: the pure pull planner (which chunk from which holder, verification outcome,
  holder failure);
- ``bitmap``: the compact wire form of a node's partial holdings;
- ``ratelimit``: a pure token bucket capping upload bandwidth;
- ``replication``: the pure policy saying which versions a node should hold or may drop.
"""
