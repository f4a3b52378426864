"""`python -m cynode` is the same as the `cynode` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
