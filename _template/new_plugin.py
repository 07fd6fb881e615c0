"""Create a new plugin distribution from this template: ``python _template/new_plugin.py NAME [--into DIR]``.

The result has the house's inner shape (pyproject with the ``llamatelemetry`` entry point,
README, ``src/llamatelemetry_NAME/`` with ``py.typed``) and one example hook to replace.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

TEMPLATE = Path(__file__).parent / "llamatelemetry-__name__"


def create(name: str, into: Path, description: str | None = None) -> Path:
    """Copy the template to ``into/llamatelemetry-NAME`` with the name filled in; returns the new folder."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"plugin name {name!r} must be lowercase letters, digits and underscores, e.g. 'acme_gpu'.")
    target = into / f"llamatelemetry-{name}"
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another name or folder.")
    text = description or f"A llamatelemetry plugin: {name}."
    for source in TEMPLATE.rglob("*"):
        relative = Path(*(part.replace("__name__", name) for part in source.relative_to(TEMPLATE).parts))
        destination = target / relative
        if source.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.name == "py.typed":
            shutil.copyfile(source, destination)
            continue
        destination.write_text(source.read_text().replace("__name__", name).replace("__description__", text))
    return target


def main(argv: list[str] | None = None) -> int:
    """Command line: create the plugin and say where."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", help="the plugin's short name, e.g. acme_gpu")
    parser.add_argument("--into", type=Path, default=Path("packages"), help="parent folder (default: packages)")
    parser.add_argument("--description", help="one sentence for the README and metadata")
    args = parser.parse_args(argv)
    target = create(args.name, args.into, args.description)
    print(f"created {target}: install it with  pip install -e {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
