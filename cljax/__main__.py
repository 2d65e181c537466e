"""``python -m cljax``: the same command line as the ``cljax`` script."""

import sys

from cljax.command import main

if __name__ == "__main__":
    sys.exit(main())
