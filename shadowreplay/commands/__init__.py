"""The commands of ``shadowreplay``, one module each, in the composition layer: the only
code besides ``app.py`` that imports a stage.

Every command module has ``add_arguments(parser)``, which adds the command's options to
the parser ``cli.py`` made for it and sets ``func`` (with ``set_defaults``) to the function
that runs it: ``func(args) -> int`` returns the exit status. ``cli.py`` imports a command's
module only to run that command (or to show every command's help), so a command imports
the stages it uses and no other: ``config example``, ``bus dump`` or ``--version`` import
none (tests/unit/test_layers.py).
"""
