"""autocritic: causal language models that critique their own (prompt, response)."""

from autocritic.versions import check_versions

__version__ = "0.1.0"

check_versions()
