"""The plugin's hard exit (status 78) keeps the line that says why, in Hermes' agent.log.

Hermes writes its log files from a queue, on a thread of its own: a record
still queued when the process calls ``os._exit`` is lost. A handler that
takes its time stands in for a busy machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging, sys, time
import hermes_logging
from flared import plugin

class Slow(logging.FileHandler):
    def emit(self, record):
        time.sleep(0.5)
        super().emit(record)
        self.flush()

logging.getLogger().setLevel(logging.INFO)
hermes_logging._register_queued_handler(Slow(sys.argv[1]))
plugin.refuse_to_run("scripts", RuntimeError("a later Hermes"))
"""


def test_the_reason_reaches_hermes_queued_log_before_the_exit(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 78, res.stderr
    assert "the flare plugin's scripts feature did not install (a later Hermes)" in log.read_text()
