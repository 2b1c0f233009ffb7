"""Detectors for Bernoulli (0/1 error) streams: CUSUM and GLR."""
