"""The inference engine. `llama_engine` is the only module in gemma-serve that imports llama_cpp;
everything the API layer needs from here is in `types` and imports nothing hardware-bound."""
