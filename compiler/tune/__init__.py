"""Tuning: MetaSchedule search, measurement (local or over RPC), schedule transfer, the tuning database."""
