"""Cluster membership: a pure SWIM + Lifeguard core (`swim`), its wire codec, the asyncio
driver over the ``Peer`` service, and the `view` the rest of the node consumes."""
