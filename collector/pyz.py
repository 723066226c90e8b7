"""Build ``shadowreplay-tail.pyz``: ``shadowreplay tail`` as one stdlib zipapp file.

It runs with a bare ``python3`` (3.11+, no virtualenv, no site-packages): it holds the
tail's own modules, ``shadowreplay.contract.errors`` and msgpack's pure-Python fallback (the C
extension cannot load from a zip, so msgpack picks the fallback by itself).

    python -m shadowreplay.collector.pyz [OUTPUT]      # default ./shadowreplay-tail.pyz
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

#: The modules the zipapp holds, as dotted names: the tail and what it imports, and the
#: packages above them (the contract's ``__init__`` imports nothing).
MODULES = (
    "shadowreplay",
    "shadowreplay.contract",
    "shadowreplay.contract.errors",
    "shadowreplay.collector",
    "shadowreplay.collector.lines",
    "shadowreplay.collector.forward_client",
    "shadowreplay.collector.tail",
)
MSGPACK_FILES = ("__init__.py", "exceptions.py", "ext.py", "fallback.py")
MAIN = "import sys\n\nfrom shadowreplay.collector.tail import main\n\nsys.exit(main())\n"


def module_path(name: str) -> Path:
    """Where module ``name`` goes in the zip: ``a/b.py``, or ``a/b/__init__.py`` for a package."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    parts = Path(*name.split("."))
    return parts / "__init__.py" if spec.submodule_search_locations is not None else parts.with_suffix(".py")


def source_of(name: str) -> Path:
    """The source file of module ``name`` where it is installed (a checkout or site-packages)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, name
    return Path(spec.origin)


def build(output: Path) -> Path:
    """Write the zipapp to ``output`` and return its path."""
    import msgpack

    msgpack_dir = Path(msgpack.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in MODULES:
            dest = root / module_path(name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source_of(name), dest)
        (root / "msgpack").mkdir()
        for name in MSGPACK_FILES:
            shutil.copyfile(msgpack_dir / name, root / "msgpack" / name)
        for licence in msgpack_dir.parent.glob("msgpack-*.dist-info/**/COPYING"):
            shutil.copyfile(licence, root / "msgpack" / "COPYING")
        (root / "__main__.py").write_text(MAIN, encoding="utf-8")
        output.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(root, output, interpreter="/usr/bin/env python3", compressed=True)
    return output


if __name__ == "__main__":
    out = build(Path(sys.argv[1] if len(sys.argv) > 1 else "shadowreplay-tail.pyz"))
    print(f"built {out} ({out.stat().st_size} bytes)")
