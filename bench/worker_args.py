"""The benches' driver -> worker hand-over: a bench runs each variant in a worker process of its
own, started with the driver's settings as command-line options."""

from __future__ import annotations

import argparse


def worker_settings(parser: argparse.ArgumentParser, args: argparse.Namespace, driver_only: set[str]) -> list[str]:
    """``args``' settings as the worker's command-line options: every option of ``parser`` whose dest
    is not in ``driver_only`` (``help`` always is), flags where they differ from their default."""
    argv = []
    for action in parser._actions:
        if action.dest in driver_only or action.dest == "help":
            continue
        value, option = getattr(args, action.dest), action.option_strings[0]
        if action.nargs == 0:  # a flag (store_true / store_false)
            argv += [option] if value != action.default else []
        elif value is not None:
            argv += [option, str(value)]
    return argv


def comma_separated(option: str, value: str, choices) -> list[str]:
    """``value`` (an option's comma-separated list, one run each) split, each item one of ``choices``;
    anything else stops the bench naming the option and its choices."""
    items = value.split(",")
    if not set(items) <= set(choices):
        raise SystemExit(f"{option} {value!r}: expected a comma-separated subset of {tuple(choices)}")
    return items
