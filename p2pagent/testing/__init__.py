"""Test support shipped with the package: real daemon processes and certificates for tests,
benchmarks and the demo. Nothing here is used by a running node."""
