"""`general`: `basic` (logit KD + hard label, with its schedules and probability shift) plus
intermediate-layer matches between teacher and student features (DESIGN §5)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from brewer_cli.distillers.base import DistillerInputs
from brewer_cli.distillers.basic import BasicDistiller, LogitKD
from brewer_cli.features import FeatureNeeds, Features
from brewer_cli.matches import ModelShape, ResolvedMatch, match_problems, validate_before_loading
from brewer_cli.projections import build_projection
from brewer_cli.recipe import Recipe


class GeneralDistiller(BasicDistiller):
    kind = "general"
    # Matches may read only some layers, and with kd_weight 0 (or an encoder without a head, in
    # general distillation) the classifier and pooler get no gradient.
    leaves_parameters_unused = True
    # Matches read the teacher's hidden states and attention: a store of its logits cannot stand in.
    reads_teacher_store = False

    def __init__(self, inputs: DistillerInputs, logit_kd: LogitKD, matches: list[ResolvedMatch], match_teacher: int = 0):
        """`matches`: resolved by the build step against the loaded models; they read
        `teachers[match_teacher]`."""
        super().__init__(inputs, logit_kd)
        self.matches = list(matches)
        self.match_index = match_teacher
        self.teacher_shape = ModelShape.of(inputs.teachers[match_teacher].model.config)
        self.student_shape = ModelShape.of(inputs.student.model.config)
        # Projections are submodules: the optimizer trains them, the loop clips them with the
        # student, and checkpoints save (and --resume restores) them as non-student state.
        self.projections = nn.ModuleDict()
        self.projection_keys: list[str | None] = []
        # Seeded from the recipe so that two runs of one recipe start from the same projections,
        # without disturbing the global generator that the loop seeds itself.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(inputs.training.seed)
            for index, match in enumerate(self.matches):
                self.projection_keys.append(self._projection_for(index, match))
        self.part_names = [self._part_name(index, match) for index, match in enumerate(self.matches)]
        # training.compile: the match losses compiled (compile_student), by loss name.
        self.compiled_losses: dict[str, Any] = {}
        # Both sides read the same kinds of feature; attention is captured only when a match reads it.
        reads = {match.reads for match in self.matches}
        self._needs = FeatureNeeds(
            hidden_states="hidden" in reads,
            attention_scores="attention" in reads,
            attention_inputs="attention_inputs" in reads,
        )

    @classmethod
    def recipe_problems(cls, recipe: Recipe) -> list[str]:
        return super().recipe_problems(recipe) + match_problems(recipe)

    @classmethod
    def check_before_loading(cls, recipe: Recipe) -> None:
        """Layer indices, widths and heads against the configs readable without loading weights."""
        validate_before_loading(recipe)

    def _projection_for(self, index: int, match: ResolvedMatch) -> str | None:
        if match.projection is None:
            return None
        # TinyBERT's hidden loss maps every layer and the embeddings through one matrix.
        key = match.loss if match.spec.shared_projection else f"match_{index}"
        if key not in self.projections:
            self.projections[key] = build_projection(match.projection, self.student_shape.width, self.teacher_shape.width)
        return key

    @staticmethod
    def _part_name(index: int, match: ResolvedMatch) -> str:
        def short(layer) -> str:
            return f"{layer[0]}+{layer[1]}" if isinstance(layer, tuple) else str(layer)

        return f"{match.loss}.s{short(match.student_layer)}.t{short(match.teacher_layer)}.{index}"

    def student_needs(self) -> FeatureNeeds:
        return self._needs

    def teacher_needs(self) -> FeatureNeeds:
        return self._needs

    def teacher_feature_layers(self) -> tuple[tuple[str, int], ...]:
        # The teacher-output cache keeps these layers only, not every layer the forward returns.
        layers = set()
        for match in self.matches:
            for layer in match.teacher_layer if isinstance(match.teacher_layer, tuple) else (match.teacher_layer,):
                layers.add((match.reads, layer))
        return tuple(sorted(layers))

    # -- the loss -------------------------------------------------------------------------------

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        teacher = self.teacher_features(batch)
        student = self.student_features(batch, with_labels=self.logit_kd.hard_label_weight > 0)
        parts = self.logit_losses(batch, student, teacher.logits)
        self.add_match_losses(parts, batch, student, teacher)
        return parts

    def add_match_losses(
        self, parts: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], student: Features, teacher: Features
    ) -> None:
        """Each match's loss as a part, their weighted sum as `intermediate`, added to `loss`."""
        if not self.matches:
            return
        mask = batch["attention_mask"]
        intermediate = torch.zeros((), device=mask.device)
        # Packing pays where there is padding; a batch without any is compared as it is.
        real_tokens = RealTokens(mask) if any(match.spec.token_local for match in self.matches) else None
        if real_tokens is not None and real_tokens.complete:
            real_tokens = None
        for match, key, name in zip(self.matches, self.projection_keys, self.part_names):
            value = self.match_loss(match, key, student, teacher, mask, real_tokens)
            parts[name] = value
            intermediate = intermediate + match.weight * value
        parts["intermediate"] = intermediate
        parts["loss"] = parts["loss"] + intermediate

    def match_loss(
        self,
        match: ResolvedMatch,
        projection_key: str | None,
        student: Features,
        teacher: Features,
        mask: torch.Tensor,
        real_tokens: RealTokens | None = None,
    ) -> torch.Tensor:
        spec = match.spec
        student_feature = _select(student, match.reads, match.student_layer)
        teacher_feature = _select(teacher, match.reads, match.teacher_layer)
        if spec.token_local and real_tokens is not None and real_tokens.fits(student_feature, teacher_feature):
            # Padding is neither projected nor compared: the loss reads the real tokens packed,
            # which gives its masked value (MatchLoss.token_local) for a fraction of the work.
            student_feature, teacher_feature = real_tokens.packed(student_feature), real_tokens.packed(teacher_feature)
            mask = None
        if projection_key is not None:
            projection = self.projections[projection_key]
            student_feature = tuple(projection(item) for item in student_feature) if spec.pair else projection(student_feature)
        loss = self.compiled_losses.get(match.loss, spec.fn)
        if spec.takes_relation_heads:
            return loss(student_feature, teacher_feature, mask, relation_heads=match.relation_heads)
        return loss(student_feature, teacher_feature, mask)

    def compile_student(self, backend: str) -> None:
        """The student as every distiller compiles it, and each match loss: its chain of small
        element-wise operations becomes a few fused kernels. Shapes are marked dynamic, since every
        batch has its own length (and packed real tokens their own count)."""
        super().compile_student(backend)
        for match in self.matches:
            if match.loss not in self.compiled_losses:
                self.compiled_losses[match.loss] = torch.compile(match.spec.fn, backend=backend, dynamic=True)
        if self.compiled is not None and self.compiled_losses:
            self.compiled["losses"] = sorted(self.compiled_losses)

    # -- the plan -------------------------------------------------------------------------------

    def describe_losses(self) -> list[str]:
        lines = super().describe_losses()
        if not self.matches:
            lines.append("no intermediate matches (`distillation.matches` is empty): this is basic KD")
        lines.extend(match.describe(self.student_shape, self.teacher_shape) for match in self.matches)
        return lines


class RealTokens:
    """A batch's real tokens, to pack (B, L, d) features into (1, n_real, d) for token-local losses;
    a layer read by several matches is packed once."""

    def __init__(self, mask: torch.Tensor):
        self.shape = tuple(mask.shape)
        self.positions = mask.reshape(-1).nonzero().squeeze(1)
        self.complete = self.positions.numel() == mask.numel()  # no padding at all
        self.done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def fits(self, *features: Any) -> bool:
        """Tensors of this batch's (B, L); anything else keeps the loss's own shape checks."""
        return all(
            isinstance(item, torch.Tensor) and item.dim() == 3 and tuple(item.shape[:2]) == self.shape for item in features
        )

    def packed(self, features: torch.Tensor) -> torch.Tensor:
        known = self.done.get(id(features))
        if known is None or known[0] is not features:
            # The tensor itself is kept beside its packing, so its id cannot be reused meanwhile.
            known = (features, features.reshape(-1, features.shape[-1]).index_select(0, self.positions).unsqueeze(0))
            self.done[id(features)] = known
        return known[1]


def _select(features: Features, reads: str, layer: int | tuple[int, int]) -> Any:
    """The feature of one layer (or a pair of layers). hidden_states[i] is layer i (0 = the
    embeddings); attention i is layer i's attention, at position i − 1 of the per-layer tuples."""
    if isinstance(layer, tuple):
        return tuple(_select(features, reads, item) for item in layer)
    if reads == "hidden":
        return features.hidden_states[layer]
    if reads == "attention":
        return features.attention_scores[layer - 1]
    return features.attention_inputs[layer - 1]
