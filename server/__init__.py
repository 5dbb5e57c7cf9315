"""gemma-serve: a local, OpenAI-compatible server for Gemma 3 QAT GGUF models.

The package is laid out in the order data flows through it:
settings -> registry -> fetch -> engine -> api, assembled by `app.create_app` and run by `cli`.
"""

__version__ = "0.1.0"
