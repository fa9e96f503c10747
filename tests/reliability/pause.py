"""Run the compress CLI with one function made to stop half-way, so a test can interrupt or kill it there.

    python tests/reliability/pause.py READY MODULE:ATTR[.ATTR] -- compress arguments...

The function runs normally, then the process writes its pid to READY and sleeps: at that moment the
stage has written real data into its temporary folder but not its manifest. The test then sends SIGINT
(Ctrl-C) or SIGKILL (kill -9) and checks what is left on disk.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time


def main() -> int:
    ready, target, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: pause.py READY MODULE:ATTR -- ARGS"
    module, attr = target.split(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    def paused(*a, **kw):
        result = original(*a, **kw)
        with open(ready + ".partial", "w") as fh:
            fh.write(str(os.getpid()))
        os.replace(ready + ".partial", ready)
        time.sleep(300)
        return result

    setattr(owner, name, paused)
    # A process started in the background by a non-interactive shell inherits SIGINT ignored, and Python
    # then installs no KeyboardInterrupt handler; a terminal's Ctrl-C always finds the default one.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from compress.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
