"""Generate the gRPC stubs in node/rpc/ from the .proto files beside them.

    python tools/gen_protos.py          # write the stubs
    python tools/gen_protos.py --check  # exit 1 when the committed stubs are stale (CI runs this)

The protos are compiled under the virtual path cynode/rpc/ (protoc's -Ivirtual=physical), so the
generated modules import each other as `cynode.rpc.*_pb2`, which is where the package installs them.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
RPC = ROOT / "node" / "rpc"


def generate(out: Path) -> list[Path]:
    protos = sorted(RPC.glob("*.proto"))
    args = [
        "protoc",
        f"-Icynode/rpc={RPC}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
    ] + [f"cynode/rpc/{p.name}" for p in protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out / "cynode" / "rpc").glob("*_pb2*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when node/rpc stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generated = generate(Path(tmp))
        stale = [g.name for g in generated if not (RPC / g.name).exists() or not filecmp.cmp(g, RPC / g.name, shallow=False)]
        extra = {p.name for p in RPC.glob("*_pb2*")} - {g.name for g in generated}
        if args.check:
            if stale or extra:
                print(f"stale gRPC stubs in node/rpc: {sorted(stale) + sorted(extra)}; run `make protos`", file=sys.stderr)
                return 1
            print("gRPC stubs are up to date")
            return 0
        for name in extra:
            (RPC / name).unlink()
        for g in generated:
            shutil.copyfile(g, RPC / g.name)
        print(f"wrote {len(generated)} files to {RPC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
