"""`python -m cream_operator [flags]` is `cream operator [flags]`."""

import sys

from .cli import main

sys.exit(main(["operator", *sys.argv[1:]]))
