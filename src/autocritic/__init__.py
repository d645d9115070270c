"""autocritic: causal language models that critique their own (prompt, response)."""

__version__ = "0.1.0"
