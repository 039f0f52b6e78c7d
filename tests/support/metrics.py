"""Scraping a program's --metrics endpoint over HTTP and reading it with prometheus_client's
own parser (`scrape`, `value`), and waiting for a value (`wait_for_value`). Reads only.
"""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def fetch(port: int, path: str = "/metrics") -> tuple[int, str]:
    """GET http://127.0.0.1:port/path: the status and the body."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics: (name, sorted labels) -> value, parsed by prometheus_client."""
    status, text = fetch(port)
    assert status == 200, text
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """One sample's value (KeyError names what is missing)."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        raise KeyError(f"no sample {name}{labels}; have {sorted(k[0] for k in samples)}")
    return samples[key]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_for_value(port: int, name: str, wanted: float, timeout: float = 30.0,
                   **labels: str) -> Samples:
    """Scrape until *name*{labels} == *wanted*; the last scrape."""
    return wait_for_values(port, {(name, tuple(sorted(labels.items()))): wanted}, timeout)


def wait_for_values(port: int, wanted: dict[tuple[str, tuple[tuple[str, str], ...]], float],
                    timeout: float = 30.0) -> Samples:
    """Scrape until one scrape has every (name, sorted labels) -> value of *wanted* at once
    (gauges set by the same scan agree only within one scrape); that scrape."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if all(samples.get(key) == value for key, value in wanted.items()):
            return samples
        if time.monotonic() > deadline:
            have = {key: samples.get(key) for key in wanted}
            raise AssertionError(f"never all of {wanted}: the last scrape had {have}")
        time.sleep(0.1)
