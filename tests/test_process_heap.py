"""common.process.settle_heap, in a fresh interpreter of its own (it changes the whole
process's garbage collector): start-up objects frozen, the youngest generation collected
less often, and cyclic garbage made afterwards still collected."""

from __future__ import annotations

import json
import subprocess
import sys

from common.process import YOUNG_GENERATION_THRESHOLD

PROBE = """
import gc, json, weakref
from common.process import settle_heap
before = gc.get_threshold()
settle_heap()
class Node:
    pass
node = Node()
node.self = node  # a reference cycle, as each closed connection leaves
alive = weakref.ref(node)
del node
gc.collect()
print(json.dumps({"frozen": gc.get_freeze_count(), "before": before,
                  "after": gc.get_threshold(), "cycle_alive": alive() is not None}))
"""


def test_settle_heap_freezes_start_up_and_still_collects_cycles() -> None:
    """After settle_heap the start-up objects are frozen, only the youngest generation's
    threshold changed, and a cycle made later is collected."""
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, check=True)
    found = json.loads(done.stdout)
    assert found["frozen"] > 1000  # the interpreter's and relay's modules
    assert found["after"] == [YOUNG_GENERATION_THRESHOLD, *found["before"][1:]]
    assert found["cycle_alive"] is False
