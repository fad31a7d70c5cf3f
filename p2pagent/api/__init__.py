"""The public ``Agent`` service and the node-to-node ``Peer`` service handlers."""
