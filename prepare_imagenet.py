"""Prepare ImageNet-1k as 28x28 gray: `python prepare_imagenet.py --source ILSVRC/imagenet-1k --out DIR`.

The same as `cljax prepare-imagenet ...`; see docs/imagenet.md.
"""

import sys

from cljax.data.imagenet import prepare_main

# The guard matters: worker processes are spawned and re-import this file.
if __name__ == "__main__":
    sys.exit(prepare_main(sys.argv[1:]))
