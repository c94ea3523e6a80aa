"""Check that an sdist holds every file of the clone that git does not ignore, so the suite runs from it.

python -m tools.check_sdist dist/asgi_hijack-0.1.0.tar.gz
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tools.check_sdist SDIST.tar.gz", file=sys.stderr)
        return 2
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    if listing.returncode:
        print(f"not checked: {ROOT} is not a git checkout, so there is no file list to compare the sdist with")
        return 0
    files = {name for name in listing.stdout.splitlines() if (ROOT / name).is_file()}
    with tarfile.open(args[0]) as sdist:
        packed = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    missing = sorted(files - packed)
    if missing:
        print(f"{args[0]} lacks {len(missing)} file(s) of the clone; add them to MANIFEST.in:", file=sys.stderr)
        print("\n".join(f"  {name}" for name in missing), file=sys.stderr)
        return 1
    print(f"{args[0]}: all {len(files)} files of the clone are in the sdist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
