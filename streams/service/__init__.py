"""The streaming service: the worker and its state, Kafka I/O, dead-letters, metrics, logs, hooks
and HTTP."""
