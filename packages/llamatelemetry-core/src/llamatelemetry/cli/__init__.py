"""The ``llamatelemetry`` command line; subcommands come from plugins (hook ``llamatelemetry_register_commands``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from llamatelemetry._version import __version__

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every plugin's subcommands."""
    from llamatelemetry.plugins import get_plugin_manager

    parser = argparse.ArgumentParser(
        prog="llamatelemetry",
        description="OpenTelemetry-native observability for LLM inference on GPUs.",
    )
    parser.add_argument("--version", action="version", version=f"llamatelemetry {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages to stderr")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    get_plugin_manager().register_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head`: not an error
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
