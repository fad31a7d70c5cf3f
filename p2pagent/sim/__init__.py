"""A deterministic simulator: a virtual clock and a simulated network that drive the same
pure protocol cores the daemon runs. Same seed, same run."""
