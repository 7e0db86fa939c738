"""The hookd daemon, one module per job:

- ``app``: the wiring (builds the components, starts them under supervision, stops them);
- ``server``: the Unix socket (access check, bounded reads, dispatch on a handler table);
- ``handlers``: one typed coroutine per socket op (enqueue, status, wait, …);
- ``spool``: imports, watches and quarantines the hook's spool files;
- ``resolver``: turns queued requests (.drv / outputs) into filtered, pinned queue items;
- ``targets``: builds the configured targets (or the default cache) and their workers;
- ``supervisor``: restarts crashed components with backoff; liveness and sd_notify;
- ``events``: progress notification shared by the others.
"""

from hookd.daemon.app import Daemon, run_daemon
from hookd.daemon.targets import build_targets

__all__ = ["Daemon", "build_targets", "run_daemon"]
