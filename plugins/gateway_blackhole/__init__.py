"""Built-in ``blackhole`` gateway: accepts every message and counts it, to measure the engine itself."""
