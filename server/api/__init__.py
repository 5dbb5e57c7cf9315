"""The OpenAI-compatible HTTP API: wire types, pure converters, thin routers, errors.

Nothing here imports llama_cpp: the engine is reached through `server.engine.contract.Engine`.
"""
