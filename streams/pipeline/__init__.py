"""The pure evaluation pipeline: decode, join, score, monitor, policy, rollout, engine, backtest.
No Kafka, no HTTP."""
