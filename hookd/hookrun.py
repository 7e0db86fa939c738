"""The post-build hook's launcher: ``python3 -I -S <package dir>/hookrun.py``.

Python compiles the script it is given on every run and never caches it; a module that script
imports is loaded from its ``__pycache__`` bytecode. hook.py as the script costs a compile per
build (about 0.6 ms, a twentieth of the hook), so this tiny file is the script and imports hook.py
from the package directory, whose bytecode is written at install (pip, ``compileall`` in scripts/setup.sh;
nix/package.nix bakes the same three lines into ``libexec/hookd/hookd-hook``). Standard library
only, like hook.py; the package directory is appended to ``sys.path`` (after the standard
library, which the hook's own imports find first).
"""

import os
import sys

if __name__ == "__main__":
    # hook.py as a top-level module from this directory: importing the package `hookd` would
    # add its __init__ (and __future__) to every build. Appended, so the standard library wins.
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))
    from hook import main  # type: ignore[import-not-found]

    main()
    os._exit(0)  # as hook.py does: no interpreter teardown on the build's critical path
