"""`brewer size-report`: how big, how costly and how fast a model is, alone or against its teacher.

Users pick a student by the figures TextBrewer's paper prints (Table 3: T6 65M, T3 44M, T3-small
17M, T4-tiny 14M parameters), so this module reproduces them exactly as the paper defines them and
adds what the paper leaves out: FLOPs, bytes on disk and measured latency.

Figures and their definitions:

- Parameters are counted once per tensor: tied weights (an MLM decoder sharing the word
  embeddings) and shared layers (ALBERT) appear once, buffers (position ids, masks) never.
  Every parameter belongs to one part, decided by its module path: *embeddings* (lookup tables,
  their LayerNorm and any factorized-embedding projection such as ALBERT's
  `embedding_hidden_mapping_in` or ELECTRA's `embeddings_project`), *encoder* (the transformer
  layers, of an encoder or a decoder), *final_norm* (a registered pre-LN decoder's norm after the
  last layer: GPT-2's ln_f, Llama's norm; 0 for encoders), *head* (the pooler and everything outside
  the base model; a decoder's LM head tied to the token embeddings is that one matrix, counted once
  with the embeddings).
- "Excluding output layers" = embeddings + encoder + final norm: the pooler and the task head are
  left out.
  This is the figure TextBrewer's Table 3 reports. (The paper's numbers are reproduced to within
  0.35M with the cased BERT vocabulary of 28996 tokens its English experiments used; with the
  uncased 30522-token vocabulary T6 and T3 come out 1.4M and 1.1M larger.)
- FLOPs per example at `seq_len` tokens are analytic: 2 × the multiply-adds of every matrix
  product: per layer the Q/K/V/O projections, QKᵀ and attention·V, the feed-forward block
  (three matrices when gated, as in Llama), plus factorized-embedding projections and the head
  (which reads one pooled token for an encoder's sequence classification; a decoder's LM head
  and its `score` head multiply every token, over the whole vocabulary for the LM head; GQA's
  key/value projections are num_key_value_heads × head_dim wide). Not counted: embedding lookups,
  softmax, LayerNorm, activations, biases, residual additions, masking, rotary or relative
  position terms (DeBERTa's disentangled attention). This is what
  `torch.utils.flop_counter.FlopCounterMode` reports for the eager attention implementation; on
  CPU it does not see the fused SDPA kernel, so under SDPA it reports less than this count.
- Latency is the median and 90th percentile wall time of one forward pass per batch, after
  warm-up, on random token ids of length `seq_len` without padding, under `torch.inference_mode`
  with the model in eval mode; throughput is examples per second at the median.

- The sequence length is `--seq-len`, else the target run's `data.max_length` (its recipe.yaml),
  else 128 — capped by the fewest positions a reported model has.
- A run's metric is its summary.json's (the student's; for the teacher, as the student's run
  measured it when that run's teacher is the model given), shown beside size and latency and
  plotted against them.

Modules: targets.py (resolving what the user points at), figures.py (architecture, parameters by
part, FLOPs), latency.py, runs.py (what a run directory adds: sequence length, metric, name),
report.py (the report and `run`), rendering.py (table, JSON, Markdown, plot). Parameters are
counted, and parts told apart, by brewer_cli/families.
"""

from brewer_cli.families import parameter_counts_by_part as count_parameters
from brewer_cli.size_report.figures import analytic_flops, architecture_summary, model_figures, summary_figures, usable_positions
from brewer_cli.size_report.latency import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_SEQ_LEN,
    WARMUP_RUNS,
    check_device,
    measure_latencies,
    measure_latency,
    percentile,
    recorded_threads,
)
from brewer_cli.size_report.rendering import (
    PlotPoint,
    ScatterPanel,
    draw_scatter,
    plot,
    plot_points,
    render_table,
    to_json,
    to_markdown,
)
from brewer_cli.size_report.report import build_report, compare, run
from brewer_cli.size_report.runs import choose_seq_len
from brewer_cli.size_report.targets import SizeTarget, resolve_target

# The percentile definition is pinned by a test that reads it under this name.
_percentile = percentile

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_SEQ_LEN",
    "WARMUP_RUNS",
    "PlotPoint",
    "SizeTarget",
    "analytic_flops",
    "architecture_summary",
    "build_report",
    "check_device",
    "choose_seq_len",
    "compare",
    "count_parameters",
    "measure_latencies",
    "measure_latency",
    "recorded_threads",
    "model_figures",
    "percentile",
    "plot",
    "plot_points",
    "ScatterPanel",
    "draw_scatter",
    "render_table",
    "resolve_target",
    "run",
    "summary_figures",
    "to_json",
    "to_markdown",
    "usable_positions",
]
