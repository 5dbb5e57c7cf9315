"""Installed models and their lifecycle: which models can be served (`installed`), whether one
more fits beside those loaded (`fit`, pure), and the manager that loads them on demand and
unloads them when idle (`manager`)."""
