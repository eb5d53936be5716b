"""tokenkb: the knowledge base of token-reduction research."""

__version__ = "0.1.0"
