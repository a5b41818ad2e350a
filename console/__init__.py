"""Factory's human side: the `factory` command and (later) the Textual console."""
