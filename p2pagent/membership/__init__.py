"""Cluster membership: a pure SWIM + Lifeguard core (`swim`, which wires together the rules in
`precedence`, `suspicion`, `probing`, `rejoin`, `members`, `outbox`, `broadcasts` and
`timing`), its wire codec, the asyncio driver over the ``Peer`` service, and the `view` the
rest of the node consumes."""
