"""Build ``shadowreplay-tail.pyz``: ``shadowreplay tail`` as one stdlib zipapp file.

It runs with a bare ``python3`` (3.11+, no virtualenv, no site-packages): it holds the
tail's own modules, ``shadowreplay.contract.errors`` and msgpack's pure-Python fallback (the C
extension cannot load from a zip, so msgpack picks the fallback by itself).

    python -m shadowreplay.collector.pyz [OUTPUT]      # default ./shadowreplay-tail.pyz
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = (
    "collector/__init__.py",
    "collector/lines.py",
    "collector/forward_client.py",
    "collector/tail.py",
    "shadowreplay/__init__.py",
    "shadowreplay/contract/errors.py",
)
MSGPACK_FILES = ("__init__.py", "exceptions.py", "ext.py", "fallback.py")
MAIN = "import sys\n\nfrom collector.tail import main\n\nsys.exit(main())\n"


def build(output: Path) -> Path:
    """Write the zipapp to ``output`` and return its path."""
    import msgpack

    msgpack_dir = Path(msgpack.__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel in MODULES:
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / rel, dest)
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
