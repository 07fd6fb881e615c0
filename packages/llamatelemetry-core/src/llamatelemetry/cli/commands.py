"""The core's own subcommands, registered through the same hook as any plugin's."""

from __future__ import annotations

import argparse
import json
from typing import Any

from llamatelemetry.plugins.hookspecs import hookimpl


def _plugins(args: argparse.Namespace) -> int:
    from llamatelemetry.plugins import get_plugin_manager

    pm = get_plugin_manager()
    infos = pm.plugin_infos()
    conflicts = pm.conflicts()
    if args.json:
        print(json.dumps({
            "plugins": [{"name": i.name, "distribution": i.distribution, "version": i.version, "status": i.status,
                         "error": i.error, "provides": {k: list(v) for k, v in i.provides.items()}} for i in infos],
            "conflicts": conflicts,
        }, indent=2))
        return 0
    rows = [("PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "PROVIDES")]
    for info in infos:
        provides = "; ".join(f"{kind}: {', '.join(items)}" for kind, items in sorted(info.provides.items())) or "-"
        status = info.status if not info.error or info.status == "loaded" else f"{info.status} ({info.error})"
        rows.append((info.name, info.distribution or "-", info.version or "-", status, provides))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    for conflict in conflicts:
        print(f"conflict: {conflict}")
    return 0


@hookimpl
def llamatelemetry_register_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``llamatelemetry plugins``."""
    parser = subparsers.add_parser("plugins", help="list installed plugins, their versions and what they register")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_plugins)
