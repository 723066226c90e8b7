"""Commands that span stages (composition layer: the only code besides ``cli.py`` and
``app.py`` that imports more than one stage)."""
