"""Deployment: load and run artifacts, benchmark them, boards and TVM RPC. Imports no pass and no torch."""
