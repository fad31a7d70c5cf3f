"""Model sharing: manifests, a store of verified version files, multi-source transfer.

Modules, one concept each:

- ``manifest``: what a model version is (name, format, chunk hashes) and its canonical id;
- ``store``: one file per version with a chunk index (``version_file``), chunks verified
  before they count, dedup by chunk hash, completeness, GC (blocking I/O, run in a thread by
  the driver); ``staging``: an upload's file before its version exists; ``store_migrate``:
  from the older chunk-file layout;
- ``publish``: turns a client-streamed upload into chunks and, only on success, a manifest;
- ``transfer``: the pure pull planner (which chunk from which holder, verification outcome,
  holder failure);
- ``bitmap``: the compact wire form of a node's partial holdings;
- ``ratelimit``: a pure token bucket capping upload bandwidth;
- ``replication``: the pure policy saying which versions a node should hold or may drop.
"""
