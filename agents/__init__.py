"""Factory's engine: headless, importable, and never dependent on the console or Textual."""

__version__ = "0.1.0"
