"""Entry point of the PyInstaller binary (packaging/cynode.spec): the `cynode` command.

`freeze_support` comes first, before anything else runs: the daemon starts its children with the
`spawn` method (and vLLM its engine core), and in a frozen binary a spawned child is this same
executable started again with `--multiprocessing-fork`, which must run the child's code, not the CLI.

Some libraries also start `sys.executable -m MODULE`, expecting a Python interpreter (vLLM inspects
model classes in a fresh process, so that CUDA is not initialised in the parent). In the binary
`sys.executable` is cynode, so it runs those modules itself: the ones listed here, and no others (the
binary is not a general Python interpreter).
"""

import multiprocessing
import sys

PYTHON_M_MODULES = ("vllm.model_executor.models.registry",)

if __name__ == "__main__":
    multiprocessing.freeze_support()
    if len(sys.argv) > 2 and sys.argv[1] == "-m" and sys.argv[2] in PYTHON_M_MODULES:
        import runpy

        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        sys.exit(0)
    from cynode.cli import main

    sys.exit(main())
