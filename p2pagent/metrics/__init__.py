"""Prometheus metrics of a node, one module per concern.

Each concern module defines a typed snapshot of what it reports and a collector that turns a
snapshot into metric families when Prometheus scrapes; ``node.py`` is the one place that reads
the drivers to build the snapshots, and ``http.py`` serves the registry (``/metrics`` only).
The RPC metrics live with the transport (``p2pagent.transport.metrics``), which records them.
"""
