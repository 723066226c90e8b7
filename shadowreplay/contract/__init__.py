"""The contract every stage shares: the wire format (``record``), the bus interface and
its backends (``bus``), the config dataclasses (``config``), the error types (``errors``)
and endpoint naming (``endpoint``). It imports no stage and nothing of the composition
layer (tests/unit/test_layers.py)."""
