"""``processors demo --serve`` as a newcomer runs it: the partners, their keys, the portal.

The demo runs on its embedded defaults (its own broker, sandbox services, processors, sample
events), exactly as the README's first command starts it.  With ``--serve`` it keeps answering
after its summary: the portal page is served, each printed key reads its own partner through
``/graphql`` (and nothing of the other's), and Ctrl-C ends it with exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from processors.bordereaux.treaties import load_treaty_book

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SERVING = "serving until interrupted"


class _Output:
    """The demo's output lines as they come, and an event set when ``SERVING`` is printed."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.serving = threading.Event()
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line.rstrip("\n"))
            if SERVING in line:
                self.serving.set()
        self.ended.set()

    def text(self) -> str:
        return "\n".join(self.lines)


def _graphql(url: str, key: str, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # a local URL the demo printed
        document: dict[str, Any] = json.loads(response.read())
    assert "errors" not in document, document.get("errors")
    return document["data"]


def test_the_demo_serves_the_portal_to_two_partners_until_interrupted(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["PYTHONUNBUFFERED"] = "1"
    process = subprocess.Popen(  # a fixed command: the demo as the README runs it
        [sys.executable, "-m", "processors.cli", "demo", "--serve", "--events", "40", "--policies", "10"],
        cwd=ROOT,  # as the README runs it: topics.yaml and treaties.yaml of the checkout
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = _Output(process)
    try:
        assert output.serving.wait(420), f"the demo did not reach serving:\n{output.text()[-4000:]}"
        text = output.text()
        assert "all events accounted for" in text
        assert "every signature verified" in text

        portal = re.search(r"^portal\s+(http://127\.0\.0\.1:\d+)/portal", text, re.MULTILINE)
        assert portal is not None, text
        base = portal.group(1)
        keys = dict(re.findall(r"^\s+key of (Acme Brokers|Reinsurance Corp)\s+(pk_live_\S+)", text, re.M))
        assert set(keys) == {"Acme Brokers", "Reinsurance Corp"}

        with urllib.request.urlopen(f"{base}/portal", timeout=30) as page:
            assert page.status == 200
            assert page.headers.get_content_type() == "text/html"

        query = "{ me { name kind } bordereaux(first: 100) { edges { node { treatyNumber } } } }"
        broker = _graphql(f"{base}/graphql", keys["Acme Brokers"], query)
        assert broker["me"] == {"name": "Acme Brokers", "kind": "BROKER"}
        assert broker["bordereaux"]["edges"] == []  # a broker has no bordereaux

        reinsurer = _graphql(f"{base}/graphql", keys["Reinsurance Corp"], query)
        assert reinsurer["me"] == {"name": "Reinsurance Corp", "kind": "REINSURER"}
        seen = {edge["node"]["treatyNumber"] for edge in reinsurer["bordereaux"]["edges"]}
        book = load_treaty_book(ROOT / "treaties.yaml")
        own = {t.treaty_number for t in book.treaties if t.reinsurer_code == "RE001"}
        assert seen  # it has reports ...
        assert seen <= own  # ... of its own treaties only, none of another reinsurer's

        process.send_signal(signal.SIGINT)
        assert process.wait(120) == 0
        assert output.ended.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        output.ended.wait(30)
        assert process.stdout is not None
        process.stdout.close()
