"""``python -m hatzoo.hub [MIRROR]``: serve a folder of git repositories as a local Hub until Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import sys
import time

from hatzoo.hub.local_hub import LocalHub


def main(argv: list[str] | None = None) -> None:
    """``python -m hatzoo.hub [MIRROR] [--port N]``: serve a mirror folder until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve a folder of git repositories as a local Hub (olah).")
    parser.add_argument("mirror", nargs="?", default=None, help="mirror folder (default: a temporary one)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server and clean up on SIGTERM too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with LocalHub(args.mirror, port=args.port) as hub:
        print(f"serving {hub.mirror_root} at {hub.endpoint}; export HF_ENDPOINT={hub.endpoint}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while hub.running:
                time.sleep(0.5)


if __name__ == "__main__":
    main()
