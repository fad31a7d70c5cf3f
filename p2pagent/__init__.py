"""p2pagent: a leaderless peer-to-peer runtime for AI agents."""

__version__ = "0.1.0"
