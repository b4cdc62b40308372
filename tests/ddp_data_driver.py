"""Started by tests/test_streaming.py under torchrun: `brewer distill` on two CPU processes,
recording every training batch each process reads (its example indices and token ids) in
REPORT-<rank>.json. Everything else is the CLI's path.

usage: torchrun --nproc_per_node 2 tests/ddp_data_driver.py RECIPE OUTPUT_DIR REPORT_PREFIX
"""

from __future__ import annotations

import json
import os
import sys

import brewer_cli.loop as loop_module
from brewer_cli.commands import distill
from brewer_cli.recipe import load_recipe

seen: dict[str, list] = {"indices": [], "input_ids": []}


class RecordingThroughput(loop_module.Throughput):
    """The loop counts each batch it trains on here: the place to see what a process read."""

    def count(self, batch):
        seen["indices"].extend(batch["index"].tolist())
        seen["input_ids"].extend(batch["input_ids"].tolist())
        return super().count(batch)


loop_module.Throughput = RecordingThroughput
recipe_path, output, prefix = sys.argv[1:4]
distill(load_recipe(recipe_path), output)
rank = int(os.environ["RANK"])
with open(f"{prefix}-{rank}.json", "w") as handle:
    json.dump(seen, handle)
