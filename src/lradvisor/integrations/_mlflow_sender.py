"""The MLflow sender process of :class:`lradvisor.integrations.mlflow.MLflowCallback`.

Reads one JSON request per line on stdin and answers one JSON line on stdout:
``{"warm": uri}`` opens the store (answer ``{}``, or ``{"error": why, "timed_out": …}``);
``{"spool": folder}`` sends what the spool holds (answer: the
:class:`~lradvisor.integrations.mlflow.SyncResult` fields). Clients and run ids are kept between requests. Ends when stdin closes; Ctrl-C in
the terminal is for the parent, which closes stdin when it stops.

Started isolated by :func:`lradvisor.integrations.mlflow.sender_command`.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from lradvisor.integrations.mlflow import sync, warm

    deliveries: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        if "warm" in request:
            opened, problem, timed_out = warm(request["warm"])
            deliveries.update(opened)
            answer: dict = {} if problem is None else {"error": problem, "timed_out": timed_out}
        else:
            answer = asdict(sync(request["spool"], _deliveries=deliveries))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
