"""Loading a run's models: teachers from checkpoints, students from a checkpoint, a config or by
ETD extraction from the teacher, and the checks between them (labels, vocabularies) and against
the data (attention heads that divide the width, positions for `data.max_length`, a vocabulary
for every token id)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForMaskedLM

from brewer_cli.augment.masked_lm import missing_head_weights
from brewer_cli.errors import BrewerError, ModelError, RecipeError
from brewer_cli.extract import FIELD, ExtractPlan, ExtractResult, extract_student
from brewer_cli.extract.objectives import PretrainingObjective
from brewer_cli.families import family_for
from brewer_cli.families.loading import LoadedModel, load_checkpoint, model_from_config
from brewer_cli.families.placement import check_device, load_dtype
from brewer_cli.models import (
    checkpoint_location,
    first_line,
    load_pretrained,
    position_limit,
    quiet_transformers,
    read_config_spec,
    recipe_prefix,
)
from brewer_cli.recipe import ModelSpec, Recipe, TeacherSpec
from brewer_cli.tasks import PreparedData, Task
from brewer_cli.tokenizers import build_tokenizer, load_tokenizer_dir


@dataclass
class UntrainedTeacher(LoadedModel):
    """A dry run's stand-in for a teacher that will be trained first: the teacher run's model as
    built, before any step. Its outputs carry nothing learned yet, so nothing is scored on it: an
    ETD student is cut to the recipe's shape without importance scores (`extract_from_teacher`)."""

    @classmethod
    def of(cls, model: LoadedModel) -> UntrainedTeacher:
        return cls(model.model, model.tokenizer, model.family, "teacher", f"{model.source} (untrained in this plan)")


def load_teacher(
    recipe: Recipe, task: Task, label_names: list[str] | None, spec: TeacherSpec | None = None, field: str = "teacher"
) -> LoadedModel:
    """`spec` and `field`: one teacher of several (`teachers.1`, `tasks.<name>.teacher`)."""
    spec = spec or recipe.teacher
    if spec.checkpoint is None:
        raise ModelError(
            f"{recipe.path}: {field}.checkpoint: a teacher must be a trained checkpoint (a run's final/ directory or a hub id)"
        )
    # A device this machine lacks is refused before any weight is read.
    check_device(spec.device, f"{recipe.path}: {field}.device")
    teacher = load_checkpoint(
        spec.checkpoint,
        task,
        label_names,
        recipe,
        f"{field}.checkpoint",
        "teacher",
        shape_head=False,
        dtype=load_dtype(spec.dtype),
    )
    teacher.device = spec.device
    teacher.dtype = spec.dtype
    if teacher.tokenizer is None:
        if spec.tokenizer is None:
            raise ModelError(
                f"{recipe.path}: {field}.tokenizer: {spec.checkpoint!r} has no tokenizer files — give `{field}.tokenizer: {{path: …}}`"
            )
        teacher.tokenizer = build_tokenizer(spec.tokenizer, [], recipe, f"{field}.tokenizer")
    # A multi-task recipe's teacher is loaded with its one task's recipe, whose data is tasks.<name>.data.
    lengths = max_lengths(recipe)
    if field.startswith("tasks.") and recipe.data is not None:
        lengths = [(f"{field.rsplit('.', 1)[0]}.data.max_length", recipe.data.max_length)]
    check_loaded(recipe, teacher, f"{field}.checkpoint", teacher.tokenizer, lengths)
    return teacher


def load_student(
    spec: ModelSpec, task: Task, label_names: list[str] | None, tokenizer: Any, recipe: Recipe, field: str, role: str
) -> LoadedModel:
    if spec.checkpoint is not None:
        loaded = load_checkpoint(spec.checkpoint, task, label_names, recipe, f"{field}.checkpoint", role, shape_head=True)
        if loaded.tokenizer is None:
            loaded.tokenizer = tokenizer
        # The data is tokenized with `tokenizer` (the teacher's, or the model's own).
        check_loaded(recipe, loaded, f"{field}.checkpoint", tokenizer or loaded.tokenizer)
        return loaded
    loaded = model_from_config(spec, task, label_names, tokenizer, recipe, field, role)
    check_loaded(recipe, loaded, f"{field}.config", tokenizer)
    return loaded


def trainer_tokenizer(recipe: Recipe, spec: ModelSpec, task: Task) -> Any:
    """The tokenizer of a model trained on labels (kind `trainer`)."""
    if spec.tokenizer is not None:
        # The task knows which columns hold text (sentences, words, questions and contexts).
        texts = task.tokenizer_texts(recipe) if spec.tokenizer.train_wordpiece is not None else []
        return build_tokenizer(spec.tokenizer, texts, recipe, "model.tokenizer", generates_text=task.generates_text)
    if spec.checkpoint is not None:
        location = checkpoint_location(spec.checkpoint, recipe, "model.checkpoint")
        return load_tokenizer_dir(location, recipe, "model.checkpoint")
    raise ModelError(
        f"{recipe.path}: model.tokenizer: a model built from a config needs a tokenizer — give "
        f"`tokenizer: {{path: …}}` or `tokenizer: {{train_wordpiece: {{vocab_size: …}}}}`"
    )


def extraction_plan(recipe: Recipe) -> ExtractPlan:
    """The recipe's `student.init.extract` as an ExtractPlan; its field checks need no weights, so
    they run before a missing teacher is trained."""
    spec = recipe.student.init.extract
    layers = tuple(spec.layers) if isinstance(spec.layers, (list, tuple)) else spec.layers
    target = None
    if spec.target is not None:
        # FLOPs are counted at the length the student will read; a size_of config is read now, so
        # that a missing file fails before any teacher is trained.
        size_of = spec.target.size_of
        target = {
            **spec.target.model_dump(exclude_none=True),
            "seq_len": max_lengths(recipe)[0][1],
            **({"size_of_config": read_config_spec(size_of, recipe, f"{FIELD}.target.size_of")} if size_of else {}),
        }
    try:
        return ExtractPlan(
            target=target,
            layers=layers,
            selection=spec.selection,
            hidden=spec.hidden,
            heads=spec.heads,
            head_dim=spec.head_dim,
            intermediate=spec.intermediate,
            key_value_heads=spec.key_value_heads,
            strategy=spec.strategy,
            seed=spec.seed,
            hidden_scoring=spec.hidden_scoring,
            rounds=spec.rounds,
        )
    except BrewerError as error:
        raise _extraction_error(recipe, error) from None


def _extraction_error(recipe: Recipe, error: Exception) -> Exception:
    """extract/ names the field (student.init.extract.…) but cannot know the file: add the recipe's
    path so the message says what to edit. Field problems become recipe problems, one per line."""
    lines = str(error).splitlines()
    if type(error) is not ModelError and lines and all(line.startswith(FIELD) for line in lines):
        return RecipeError([f"{recipe.path}: {line}" for line in lines])
    return type(error)(f"{recipe.path}: {FIELD}: {error}")


def extract_from_teacher(recipe: Recipe, task: Task, teacher: LoadedModel, data: PreparedData) -> LoadedModel:
    """ETD: the student is cut out of the teacher's own parameters (width, then depth); for
    importance, the teacher is scored on the first `examples` training examples."""
    spec = recipe.student.init.extract
    plan = extraction_plan(recipe)
    if plan.strategy in ("importance", "activation") and isinstance(teacher, UntrainedTeacher):
        return _extract_before_scoring(recipe, teacher, plan)
    batches = None
    objective = None
    if plan.strategy in ("importance", "activation"):
        examples = data.train.head(spec.examples)
        loader = DataLoader(examples, batch_size=16, collate_fn=task.collate(teacher.tokenizer))
        batches = [{name: tensor for name, tensor in batch.items() if name != "index"} for batch in loader]
        # A task without labels and heads (general distillation) scores the teacher with its own
        # pre-training objective (brewer_cli/extract/objectives.py).
        if plan.strategy == "importance" and task.scored_by_pretraining_objective:
            objective = pretraining_objective(recipe, teacher)
    with torch.random.fork_rng():
        try:
            result = extract_student(teacher.model, plan, batches, max_examples=spec.examples, objective=objective)
        except BrewerError as error:
            # Sizes are checked against the teacher's config only now, once it is loaded.
            raise _extraction_error(recipe, error) from None
    return _extracted_student(result, teacher.tokenizer, f"the teacher's weights (ETD extraction, {plan.strategy})")


def _extract_before_scoring(recipe: Recipe, teacher: UntrainedTeacher, plan: ExtractPlan) -> LoadedModel:
    """The plan's view of an importance extraction from a teacher not trained yet: the recipe's
    shape cut without scores (uniform, seeded, the way `random` cuts), said to be so. Explicit
    sizes are the student's; for a `target` the sizes are chosen from the trained teacher's scores,
    so the plan shows the uniform shape that meets the target and says what it does not know."""
    with torch.random.fork_rng():
        try:
            result = extract_student(teacher.model, replace(plan, strategy="random"))
        except BrewerError as error:
            raise _extraction_error(recipe, error) from None
    kept = {
        **result.kept,
        "strategy": f"{plan.strategy}, scored once the teacher is trained — not on this plan's untrained stand-in",
    }
    if "budget" in kept:
        kept["budget"] = {
            **kept["budget"],
            "rule": (
                "made once the teacher is trained, from its importance scores: the shape keeping the most importance "
                "per unit of the target among those within it. Known now: the target and the teacher's size; not known: "
                "the layers, widths and heads chosen, nor which are kept. Shown: the uniform shape that meets the target "
                "(the choice without scores)"
            ),
        }
    return _extracted_student(
        ExtractResult(model=result.model, kept=kept, importance_summary=None),
        teacher.tokenizer,
        "the teacher's weights (ETD extraction, importance: scored after the teacher is trained; shown here: the recipe's "
        "shape, cut without scores)",
    )


def _extracted_student(result: ExtractResult, tokenizer: Any, source: str) -> LoadedModel:
    """The student ETD cut out of the teacher, in training mode, with the teacher's tokenizer; in
    fp32 whatever the teacher's `teacher.dtype` (the student trains with fp32 master weights)."""
    result.model.to(torch.float32)
    result.model.train()
    return LoadedModel(result.model, tokenizer, family_for(result.model.config), "student", source, extraction=result)


# Checkpoint classes that carry a masked-LM head (BertForMaskedLM, BertForPreTraining, …); any
# other listed architecture (BertModel, …ForSequenceClassification) has none, and is not reloaded.
MASKED_LM_ARCHITECTURES = ("ForMaskedLM", "ForPreTraining", "LMHeadModel")


def pretraining_objective(recipe: Recipe, teacher: LoadedModel) -> PretrainingObjective:
    """ETD's task-agnostic importance: `masked_lm` with the teacher's own masked-LM head when its
    checkpoint has one, else `masked_hidden_reconstruction` on the bare encoder."""
    tokenizer = teacher.tokenizer
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise ModelError(
            f"{recipe.path}: {FIELD}.strategy: importance without labels scores the teacher on masked corpus text, but "
            f"the teacher's tokenizer has no mask token — give the teacher a tokenizer with one (teacher.tokenizer), or "
            f"use strategy: random"
        )
    return PretrainingObjective(
        mask_token_id=tokenizer.mask_token_id,
        vocabulary_size=teacher.model.config.vocab_size,
        special_ids=frozenset(tokenizer.all_special_ids),
        masked_lm=teacher_masked_lm(recipe, teacher),
    )


def teacher_masked_lm(recipe: Recipe, teacher: LoadedModel) -> Any:
    """The teacher's checkpoint loaded with its masked-LM head, in eval mode on the teacher's
    device, or None when the checkpoint has no such head (its architectures name none, or the head's
    weights are missing: transformers would fill them at random)."""
    architectures = getattr(teacher.model.config, "architectures", None) or []
    if architectures and not any(name.endswith(MASKED_LM_ARCHITECTURES) for name in architectures):
        return None
    where = f"{recipe_prefix(recipe)}teacher.checkpoint: "
    try:
        with quiet_transformers():
            model, info = load_pretrained(AutoModelForMaskedLM, teacher.source, where, output_loading_info=True)
    except ModelError:
        raise
    except ValueError:
        return None  # transformers has no masked-LM class for this model type
    except Exception as error:
        raise ModelError(f"{where}could not load {teacher.source!r} with its masked-LM head: {first_line(error)}") from None
    if missing_head_weights(model, info):
        return None
    return model.to(next(teacher.model.parameters()).device).eval()


def student_of(recipe: Recipe, task: Task, teacher: LoadedModel, data: PreparedData, tokenizer: Any) -> LoadedModel:
    """The recipe's student: extracted from `teacher` (ETD), or from a checkpoint or config."""
    if recipe.student.init is not None:
        return extract_from_teacher(recipe, task, teacher, data)
    return load_student(recipe.student, task, data.label_names, tokenizer, recipe, "student", "student")


def named_labels(model: Any) -> list[str] | None:
    """The model's label names, unless they are transformers' placeholders (LABEL_0, …)."""
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if not names or all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def check_vocabularies(recipe: Recipe, teacher: LoadedModel, student: LoadedModel) -> None:
    """The single-teacher kinds: the student reads the ids the teacher's tokenizer makes, and the KD
    losses compare the two models' logits id by id over the teacher tokenizer's `len` ids (the count
    the distiller trims padding rows to). multi_teacher does not come here: its teachers may read
    their own tokenization (brewer_cli.tasks.views)."""
    check_same_tokenizer(recipe, teacher, student)
    teacher_vocab = teacher.model.config.vocab_size
    student_vocab = student.model.config.vocab_size
    tokens = len(teacher.tokenizer)
    # Sizes that differ only by padding rows past the tokenizer's ids (Qwen2: 151,936 vs 152,064 for
    # 151,665 tokens) are one vocabulary: the KD losses compare the tokenizer's ids (trim_to_vocabulary).
    if teacher_vocab == student_vocab or min(teacher_vocab, student_vocab) >= tokens:
        return
    raise ModelError(
        f"{recipe.path}: student.checkpoint: the student's vocabulary has {student_vocab} tokens but the "
        f"teacher's has {teacher_vocab}, and the teacher's tokenizer makes {tokens} token ids — both read the same "
        f"token ids in one batch, so they must share a tokenizer (their sizes may differ only by padding rows past "
        f"the tokenizer's {tokens} ids); use a student with the teacher's vocabulary, or build it from a config "
        f"(`student.config`), which takes the teacher's tokenizer"
    )


def check_same_tokenizer(recipe: Recipe, teacher: LoadedModel, student: LoadedModel) -> None:
    """A student checkpoint saved with its own tokenizer must map ids to the teacher's tokens: it is
    trained on batches the teacher's tokenizer makes, and an id that means another token to it would
    be taught the teacher's distribution for the wrong token (or fall outside its vocabulary)."""
    if student.tokenizer is None or student.tokenizer is teacher.tokenizer:
        return
    student_tokens, teacher_tokens = student.tokenizer.get_vocab(), teacher.tokenizer.get_vocab()
    if student_tokens == teacher_tokens:
        return
    student_by_id = {number: token for token, number in student_tokens.items()}
    teacher_by_id = {number: token for token, number in teacher_tokens.items()}
    differing = min(
        number for number in set(student_by_id) | set(teacher_by_id) if student_by_id.get(number) != teacher_by_id.get(number)
    )
    raise ModelError(
        f"{recipe.path}: student.checkpoint: the student's own tokenizer ({len(student.tokenizer)} tokens) is not the "
        f"teacher's ({len(teacher.tokenizer)} tokens) — id {differing} is {student_by_id.get(differing)!r} to the student "
        f"and {teacher_by_id.get(differing)!r} to the teacher. The student trains on the ids the teacher's tokenizer "
        f"makes and their logits are compared id by id, so they must share a tokenizer: use a student checkpoint with "
        f"the teacher's tokenizer, build the student from a config (`student.config`), which takes the teacher's "
        f"tokenizer, or, for a sequence-level task, use `distillation.kind: multi_teacher`, whose teachers read the "
        f"examples tokenized their own way"
    )


def max_lengths(recipe: Recipe) -> list[tuple[str, int]]:
    """Each `data.max_length` the recipe's models read, with its dotted path."""
    if recipe.data is not None:
        return [("data.max_length", recipe.data.max_length)]
    return [(f"tasks.{name}.data.max_length", entry.data.max_length) for name, entry in (recipe.tasks or {}).items()]


def shape_problems(
    config: Any, field: str, lengths: list[tuple[str, int]], where: str, editable: bool, pad_token_id: int | None = None
) -> list[str]:
    """What a model of `config` cannot do (heads that do not divide its width, too few positions
    for the data's length), one `file: dotted.path: problem — fix` line each. `editable`: the
    config is the user's (`student.config`), so the fix names its keys."""
    problems: list[str] = []
    names = getattr(config, "attribute_map", {}) or {}
    hidden_key, heads_key = names.get("hidden_size", "hidden_size"), names.get("num_attention_heads", "num_attention_heads")
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if isinstance(hidden, int) and isinstance(heads, int):
        if heads < 1 or hidden < 1:
            problems.append(f"{where}{field}: {hidden_key} {hidden} and {heads_key} {heads} must both be at least 1")
        elif hidden % heads:
            fitting = min((count for count in range(1, hidden + 1) if hidden % count == 0), key=lambda count: abs(count - heads))
            problems.append(
                f"{where}{field}: {hidden_key} {hidden} is not a multiple of {heads_key} {heads} — each attention head "
                f"takes {hidden_key} / {heads_key} dimensions; use {heads_key}: {fitting}, or {hidden_key}: "
                f"{heads * max(1, round(hidden / heads))}"
            )
    limit = position_limit(config, pad_token_id)
    if limit is not None:
        fits, reserved = limit
        for length_field, length in lengths:
            if length <= fits:
                continue
            detail = f"max_position_embeddings {config.max_position_embeddings}" + (
                f" minus the {reserved} position{'s' if reserved != 1 else ''} {config.model_type} reserves before the first token"
                if reserved
                else ""
            )
            change = (
                f"raise max_position_embeddings in {field} to {length + reserved}"
                if editable
                else f"use a model with max_position_embeddings ≥ {length + reserved}"
            )
            problems.append(
                f"{where}{length_field}: {length} tokens do not fit {field}, which reads at most {fits} ({detail}) — "
                f"lower {length_field} to {fits}, or {change}"
            )
    return problems


def check_loaded(
    recipe: Recipe, loaded: LoadedModel, field: str, tokenizer: Any, lengths: list[tuple[str, int]] | None = None
) -> None:
    """A loaded model against the data it will read, before any step: its shapes (see
    `shape_problems`) and a vocabulary that holds every id `tokenizer` makes (a larger id would
    index past the embedding matrix at the first batch)."""
    where = recipe_prefix(recipe)
    config = loaded.model.config
    lengths = max_lengths(recipe) if lengths is None else lengths
    problems = shape_problems(config, field, lengths, where, editable=field.endswith(".config"))
    vocabulary = getattr(config, "vocab_size", None)
    if tokenizer is not None and isinstance(vocabulary, int) and vocabulary < len(tokenizer):
        problems.append(
            f"{where}{field}: the model's vocabulary has {vocabulary} tokens but its tokenizer makes {len(tokenizer)} "
            f"token ids — ids from {vocabulary} up would index past the embedding matrix; use the tokenizer the model "
            f"was trained with, or a model with vocab_size ≥ {len(tokenizer)}"
        )
    if problems:
        raise ModelError("\n".join(problems))
