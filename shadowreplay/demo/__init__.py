"""``shadowreplay demo``: the whole pipeline on one machine with nothing else installed."""
