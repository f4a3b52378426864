"""Entry point of the PyInstaller binary (packaging/cynode.spec): the `cynode` command.

`freeze_support` comes first, before anything else runs: the daemon starts its children with the
`spawn` method (and vLLM its engine core), and in a frozen binary a spawned child is this same
executable started again with `--multiprocessing-fork`, which must run the child's code, not the CLI.
"""

import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.freeze_support()
    from cynode.cli import main

    sys.exit(main())
