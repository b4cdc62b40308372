"""ETD, "Extract Then Distill" (Chen et al., ICANN 2021): build a student from the teacher's weights.

A student built this way starts from a subset of the teacher's parameters instead of a random
initialization, so distillation begins close to the teacher. Extraction has two parts:

Width. One set of hidden channels is kept for the whole network, because the residual stream ties
every module that reads or writes it: the embeddings (word, position, token type), every
LayerNorm, the input columns of Q/K/V, the output rows of the attention projection, both ends of
the feed-forward block, the pooler and the task head. Inside each layer the FFN keeps its own
subset of neurons, and attention keeps either fewer heads (same head size) or a subset of neurons
inside every head (smaller head size, same head count), or both. For a head-neuron subset the
query and key of a head share one subset, because only matching coordinates contribute to the
dot product q·k; the value projection has its own subset, and the attention output projection
keeps the input columns of that value subset.

Depth. M of the teacher's N layers are kept. `uniform` keeps layers round(i·N/M) for i = 1..M
(1-based, round half up): with k = N/M an integer that is exactly k, 2k, …, N as in ETD; when N/M
is not an integer the kept layers are the nearest to even spacing and always include the last
layer (N=4, M=3 keeps 1, 3, 4). `first` keeps 1..M and `last` keeps N-M+1..N; an explicit tuple of
1-based layer numbers is kept as given. Width is decided on the full-depth model, then the layers
are dropped, in ETD's order.

Things inherent to the method, stated so nobody mistakes them for bugs:
- A LayerNorm over a subset of channels computes its mean and variance over that subset, so even
  with perfect channel choice the student's activations differ from the teacher's. Distillation
  repairs this; ETD reports the same.
- A head with a smaller head size scales its scores by 1/√d′ instead of the teacher's 1/√d, so the
  kept partial dot product is √(d/d′) sharper than it was inside the teacher. This is what ETD
  does; no compensation is applied.
- heads × head_dim must equal hidden: BERT-style attention in `transformers` splits hidden_size
  into num_attention_heads heads of hidden_size / num_attention_heads each. See `plan.resolve_sizes`
  for which combinations of the three fields are accepted.

Strategies. `random` (ETD-Rand) draws every subset uniformly with a `torch.Generator` seeded with
`seed`; kept indices are sorted, so the student's channel order follows the teacher's.
`importance` (ETD-Impt) ranks structures by the first-order Taylor estimate of the loss change
when the structure is removed, |Σ w·∂L/∂w| over the weights whose zeroing removes it, computed per
batch (absolute value per batch, summed over batches so that batches of opposite sign do not
cancel):
- a head: the input columns of the attention output projection that read the head; this sum is
  exactly ∂L/∂m for a mask m multiplying the head's output (the head_mask gradient of Michel et
  al., 2019);
- a query/key neuron of a head: its row (and bias) in Q and in K; a value neuron: its column in the
  output projection;
- an FFN neuron: its input column in the FFN output projection (exactly the neuron's mask gradient,
  since GELU(0) = 0);
- a hidden channel: the LayerNorm weights and biases of that channel in every LayerNorm that writes
  the residual stream (and the rows of ELECTRA's embedding projection), summed before the absolute
  value: this is the gradient of one mask shared by every write to the channel, the form that
  matches the single hidden index set. With `hidden_scoring="activation"` the channel's score is
  instead its mean |activation| over valid tokens, summed over the embedding output and every
  layer output.

The loss L is the task loss the model computes itself when the batch carries labels (`labels`, or
`start_positions`/`end_positions` for QA). Without labels, ETD asks for the divergence to the
teacher's own output; at the teacher's own weights that divergence (KL, or soft cross-entropy) is
at its minimum and has zero gradient, so every Taylor score would be zero. brewer instead uses the
cross-entropy to the model's own arg-max predictions (hard pseudo-labels; for masked LM and token
tasks per valid token, for QA on start and end positions). Its gradient, softmax(z) − onehot(argmax),
is non-zero, and the score then measures how much removing a structure would change the
confidence of the teacher's own decisions. Regression heads have no arg-max; for them L = ½·f²
(mean over the batch), whose gradient f·∂f/∂w measures how much a structure moves the prediction.
With a `PretrainingObjective` (ETD's task-agnostic setting: no labels and a bare encoder, as in
general distillation) L is instead the teacher's own pre-training objective on masked corpus
text: its masked-LM loss when the checkpoint has the head, masked hidden-state reconstruction
otherwise (objectives.py).

`rounds` > 1 shrinks the width in equal steps (heads, head size and FFN size interpolated
linearly, hidden = heads × head size at every step), re-scoring the intermediate model each time;
layers are dropped after the last round. With `random`, rounds only change which random subset
is drawn (a random subset of a random subset is still uniform).

Families: BERT, RoBERTa (and CamemBERT, which shares its layout), XLM-RoBERTa, ELECTRA (whose embedding size may differ from the hidden
size: the embeddings then keep all their channels and the hidden channels are taken on the output
side of `embeddings_project`) and DistilBERT, with any of their standard heads; the decoders GPT-2
(fused q|k|v Conv1D sliced block by block, pre-LN: the attention and FFN output projections and the
tables write the residual stream, so they carry the hidden-channel Taylor score) and Llama /
Mistral / Qwen2 / Qwen3 (grouped-query attention with whole heads and key/value groups, gated MLP,
RMSNorm; grouped.py), with their LM and sequence-classification heads. Strategy `activation`
(Minitron's activation magnitudes, activation.py) ranks every structure by forward passes alone. ALBERT is refused:
all its layers share one block of weights, so per-layer head and neuron subsets cannot be applied.
Which modules each family has, and the widths they span, is declared by its `Family`.
The result is an ordinary `transformers` model of the teacher's class, built with `_from_config`
from the smaller config and loaded strictly with the sliced state dict; `save_pretrained` writes it
and `AutoModelFor….from_pretrained` reloads it. The teacher is never modified.

Budget. Instead of sizes, a `Target` (`target=` of the plan: at most N parameters, N× fewer FLOPs,
N× lower latency read through FLOPs, or the size of a named student config) lets extraction choose
layers, hidden, heads, head size and FFN width: among the shapes that meet the target, the one
keeping the most importance per parameter (or per FLOP); without scores, the uniform shape
(budget.py). `kept["budget"]` records the choice and the alternatives.

Modules: plan.py (the plan, the sizes and their validation), slicing.py (index sets, rules read from
the family's layout in brewer_cli/families, building the student), scoring.py (importance scores),
student.py (`extract_student`), grouped.py (grouped-query attention), activation.py (activation
scores), report.py (the importance summary and `describe`), objectives.py
(the pre-training objectives), budget.py (choosing the sizes for a target), sizing.py (the exact
parameters and FLOPs of the shapes it considers).
"""

from brewer_cli.extract.budget import choose_shape, uniform_shapes
from brewer_cli.extract.plan import FIELD, ExtractPlan, ExtractResult, Target
from brewer_cli.extract.report import describe
from brewer_cli.extract.slicing import SUPPORTED_MODEL_TYPES
from brewer_cli.extract.student import extract_student

__all__ = [
    "FIELD",
    "SUPPORTED_MODEL_TYPES",
    "ExtractPlan",
    "ExtractResult",
    "Target",
    "choose_shape",
    "describe",
    "extract_student",
    "uniform_shapes",
]
