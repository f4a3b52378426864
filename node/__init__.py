"""cynode: one daemon per machine for LLM serving and fine-tuning across a handful of hosts."""

__version__ = "0.1.0"

__all__ = ["__version__"]
