"""Factory's human side: the `factory` command and the Textual console."""

import os

# Textual paints at most TEXTUAL_FPS frames a second (60 by default), so a key press waits up
# to a frame period for its frame to start. Frames are painted only when something changed,
# so a higher cap costs nothing while idle and, measured under 5,000 events a second
# (tests/bench/bench_console.py), the same CPU: it cut the key-press p95 there from ~33 ms to
# ~17 ms. Set here, before any console module imports Textual; an exported value wins.
os.environ.setdefault("TEXTUAL_FPS", "240")
