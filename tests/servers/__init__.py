"""Loopback servers that speak providers' dialects, for tests, the demo and the benchmark."""
