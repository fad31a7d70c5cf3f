"""Command-line entry points: ``p2pagentd`` (the daemon) and ``p2pagentctl`` (the client)."""
