"""Factory's human side: the `factory` command and the Textual console."""

import os

# Textual paints at most TEXTUAL_FPS frames a second (60 by default), and a frame asked for
# within a period of the last one waits for the period to end: under load, when frames come
# often, a key press waited for that. Frames are painted only when something changed, so a
# high cap costs nothing while idle; the console gathers its own updates (ten flushes a
# second), so under 5,000 events a second (tests/bench/bench_console.py) it paints about as
# many frames at 1000 as at 240, and key presses no longer wait up to 4 ms for a period to
# end. Set here, before any console module imports Textual; an exported value wins.
os.environ.setdefault("TEXTUAL_FPS", "1000")
