"""natscale: Negative-Aware Training of LLM agents at cluster scale."""

__version__ = "0.1.0"
