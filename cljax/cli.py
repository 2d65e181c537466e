"""Command line: a thin layer over the library. Every flag of ``run`` comes from a Config field."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from cljax.config import Config
from cljax.errors import CljaxError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits 2."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _parse_type(f: dataclasses.Field):
    text = f.type if isinstance(f.type, str) else str(f.type)
    if "bool" in text:
        return None
    if "int" in text and "float" not in text:
        return int
    if "float" in text:
        return float
    return str


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Config field, with its help text and default."""
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        meta = f.metadata
        kind = _parse_type(f)
        default = f.default
        help_text = f"{meta['help']} (default: {default})"
        if kind is None:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, metavar=f.name.upper(),
                                choices=meta.get("choices"), help=help_text)


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Config)})


def _cmd_run(argv: list[str]) -> int:
    parser = _Parser(prog="cljax run", description="Run a continual-learning experiment and write its results tree.",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter if False else argparse.HelpFormatter)
    add_config_flags(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run's results (default: refuse)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = config_from_args(args)
    from cljax.experiment import format_summary, run_experiment

    result = run_experiment(config, overwrite=args.overwrite, progress=not args.no_progress)
    print(format_summary(result))
    print(f"compile: {result.compile_seconds:.1f} s, training: {result.steps_per_second:.1f} steps/s "
          f"({config.n_repeats} repeats x (learner + expert), batch {config.batch_size})")
    print(f"results: {result.algo_dir}")
    return 0


def _cmd_prepare_imagenet(argv: list[str]) -> int:
    from cljax.data.imagenet import prepare_main

    return prepare_main(argv)


def _cmd_data_info(argv: list[str]) -> int:
    from cljax.data.info import data_info_main

    return data_info_main(argv)


COMMANDS = {
    "run": (_cmd_run, "run an experiment"),
    "prepare-imagenet": (_cmd_prepare_imagenet, "prepare ImageNet-1k as 28x28 gray from Hugging Face datasets"),
    "data-info": (_cmd_data_info, "describe a prepared dataset folder and draw sample images"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: cljax COMMAND [flags]   (cljax COMMAND --help for its flags)", "", "commands:"]
        lines += [f"  {name:<18} {text}" for name, (_, text) in COMMANDS.items()]
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}: choose one of {', '.join(COMMANDS)}.", file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 0 if argv else 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except CljaxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
