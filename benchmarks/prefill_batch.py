"""How large a prefill batch should be on this machine: the teacher pass before training
(brewer_cli/teacher_cache/prefill.py) at several padded-token budgets per batch — time per
example and the peak resident memory it adds to the process.

The teacher (MiniLM-L6-H384 fine-tuned on SST-2) runs under `inference_mode` on the first N
SST-2 sentences sorted by length, longest first, with its hidden states returned (as the
`general` benchmarks' matches read them), in batches of at most B padded tokens. Each budget
runs in a child process of its own, so that its peak RSS (ru_maxrss, less the RSS before the
pass) is its own.

The report goes to benchmarks/work/reports/; `--record` also writes it into benchmarks/RESULTS.md.

    python benchmarks/prefill_batch.py [--examples 2048 --budgets 1024,2048,4096,8192,16384] [--record]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(examples: int, budget: int) -> dict[str, float]:
    import torch
    from speed_common import SST2, TEACHER, read_tsv
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    teacher = AutoModelForSequenceClassification.from_pretrained(TEACHER).eval()
    texts = [text for text, _ in read_tsv(SST2 / "train.tsv")[:examples]]
    encoded = [tokenizer(text, truncation=True, max_length=128)["input_ids"] for text in texts]
    encoded.sort(key=len, reverse=True)
    # Warm up (first-call allocations) before the baseline memory is read.
    with torch.inference_mode():
        teacher(input_ids=torch.tensor([encoded[-1]]), output_hidden_states=True)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, position = time.perf_counter(), 0
    with torch.inference_mode():
        while position < len(encoded):
            longest = len(encoded[position])
            end = min(len(encoded), position + max(1, budget // longest))
            rows = encoded[position:end]
            ids = torch.tensor([row + [0] * (longest - len(row)) for row in rows])
            mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in rows])
            teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            position = end
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"ms_per_example": 1000 * seconds / len(encoded), "added_mib": (after - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--budgets", default="1024,2048,4096,8192,16384")
    parser.add_argument(
        "--record",
        action="store_true",
        help="also write the section into benchmarks/RESULTS.md (replacing one of the same title)",
    )
    arguments = parser.parse_args()
    rows = ["| padded tokens per batch | ms / example | peak RSS added |", "|---:|---:|---:|"]
    print("\n".join(rows))
    for budget in (int(value) for value in arguments.budgets.split(",")):
        output = subprocess.run(
            [sys.executable, __file__, "--child", str(arguments.examples), str(budget)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        rows.append(f"| {budget:,} | {result['ms_per_example']:.2f} | {result['added_mib']:.0f} MiB |")
        print(rows[-1], flush=True)
    record = " --record" if arguments.record else ""
    body = f"""
Command: `python benchmarks/prefill_batch.py --examples {arguments.examples} --budgets {arguments.budgets}{record}`. The teacher
(MiniLM-L6-H384 fine-tuned on SST-2) under `inference_mode` with its hidden states returned, over the first
{arguments.examples} SST-2 training sentences sorted by length (longest first), in batches of at most B padded tokens;
each budget in a process of its own (peak RSS added: ru_maxrss after the pass less before it). brewer's prefill takes
2,048 tokens per batch on a CPU (16,384 on a GPU).

{chr(10).join(rows)}
"""
    from common import write_section

    write_section("Teacher-output prefill: batch size on a CPU", body, arguments.record)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(child(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        main()
