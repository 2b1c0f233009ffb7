"""Contracts: the event, command and flag-change models, topic names and the flagd assignment rule.
Nothing here does I/O beyond the Kafka admin helpers."""
