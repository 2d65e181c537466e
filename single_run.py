"""The spec's entry point: run one experiment, then every analysis on its saved results.

    python single_run.py [any `cljax run` flag]       e.g. --num-tasks 5 --n-repeats 4

Same flags as `cljax run`; the analyses (cl, plasticine, glue, plots) are written to
results/{dataset}/{algorithm}/analysis/.
"""

import argparse
import sys

from cljax import enable_compilation_cache
from cljax.cli import main
from cljax.experiment import algo_dir_of
from cljax.settings import add_run_flags, add_settings_flags, config_from_args

if __name__ == "__main__":
    enable_compilation_cache()  # as the `cljax` command does
    run_args = sys.argv[1:]
    code = main(["run", *run_args])
    if code == 0:
        parser = argparse.ArgumentParser(add_help=False)
        add_settings_flags(parser)
        add_run_flags(parser)
        known, _ = parser.parse_known_args(run_args)
        code = main(["analyze", str(algo_dir_of(config_from_args(known)))])
    sys.exit(code)
