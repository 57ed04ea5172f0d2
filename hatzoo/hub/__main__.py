"""``python -m hatzoo.hub [MIRROR] [--zoo DIR] [--port N]``: serve git repositories as a local Hub.

With ``--zoo zoo`` every release folder ``zoo/<name>`` is first committed into the mirror at its
deterministic revision (the one the cards pin), so ``HF_ENDPOINT`` downloads of the zoo work.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time

from hatzoo.hub.local_hub import LocalHub


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, build the zoo's repositories if asked, and serve the mirror until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve a folder of git repositories as a local Hub (olah).")
    parser.add_argument("mirror", nargs="?", default=None, help="mirror folder (default: a temporary one)")
    parser.add_argument("--zoo", default=None, help="serve the releases of this zoo folder (zoo/)")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the server and clean up on SIGTERM too
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with LocalHub(args.mirror, port=args.port) as hub:
        if args.zoo is not None:
            _serve_zoo(args.zoo, hub)
        print(f"serving {hub.mirror_root} at {hub.endpoint}; export HF_ENDPOINT={hub.endpoint}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while hub.running:
                time.sleep(0.5)


def _serve_zoo(zoo: str, hub: LocalHub) -> None:
    """Commit the zoo's releases into the served mirror and say which revision each card pins."""
    from hatzoo.hub.release import build_mirror
    from hatzoo.zoo import default_zoo

    cards = default_zoo()
    for name, (repo_id, sha) in build_mirror(zoo, hub.mirror_root).items():
        pin = cards.get_card(name).hub.revision
        note = "the card pins it" if pin == sha else f"the card pins {pin}: re-pin it to serve this release"
        print(f"{repo_id}@{sha} ({note})", flush=True)


if __name__ == "__main__":
    main()
