"""A run whose teacher is a store of its sparse logits (`teacher: {store: DIR}`, written by
`brewer capture`): no teacher model in memory; the distiller reads each training batch's teacher
distributions from the store by the examples' indices.

What is checked, before any step, because a store read against other data or settings would
train the student on the teacher's answers to other questions without any error:
- the recipe (no weights needed): a kind whose losses read only the teacher's logits, a token KD
  loss (they accept sparse distributions), a constant temperature, no extraction from the teacher
  (that needs its weights);
- the store (its manifest): complete and of this format, captured for the recipe's task, a loss
  that stays a divergence with the tail asked for (reverse KL against a `zero` tail does not), its
  tokenizer as recorded, the capture temperature equal to
  `distillation.temperature` (the store holds p_T at that temperature; it cannot be re-tempered
  without the logits it dropped), the same tokenized training examples (data fingerprint), and a
  vocabulary the student's logits cover.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from brewer_cli.build.loading import load_student
from brewer_cli.build.settings import resolve_logit_kd
from brewer_cli.distillers import DISTILLERS, BasicDistiller, DistillerInputs
from brewer_cli.errors import DataError, ModelError, RecipeError
from brewer_cli.families.loading import LoadedModel, load_checkpoint
from brewer_cli.logit_store import TOKENIZER_DIRECTORY, TeacherStore, data_fingerprint, open_store, tokenizer_hash
from brewer_cli.losses import TOKEN_KD_LOSSES
from brewer_cli.paths import resolve_path
from brewer_cli.recipe import Recipe
from brewer_cli.run import Run
from brewer_cli.tasks import TASKS
from brewer_cli.tokenizers import load_tokenizer_dir


def fingerprint_settings(recipe: Recipe) -> dict[str, Any]:
    """The settings hashed with the tokenized examples. The examples themselves carry the rest
    (max_length cuts them, packing and prompts shape them, the tokenizer makes their ids)."""
    return {"task": recipe.task.kind, "max_length": recipe.data.max_length}


def store_problems(recipe: Recipe) -> list[str]:
    """What a recipe with a teacher store may not ask for, one `file: field: problem — fix` line each."""
    problems: list[str] = []
    kind = recipe.distillation.kind
    if recipe.teachers is not None:
        problems.extend(
            f"{recipe.path}: teachers.{index}.store: kind {kind} reads each teacher's logits live — a store stands in "
            f"for the one teacher of kind basic; give teachers.{index}.checkpoint"
            for index, spec in enumerate(recipe.teachers)
            if spec.store is not None
        )
    for name, entry in (recipe.tasks or {}).items():
        if entry.teacher.store is not None:
            problems.append(
                f"{recipe.path}: tasks.{name}.teacher.store: kind {kind} runs each task's teacher — a store stands in "
                f"for the one teacher of kind basic; give tasks.{name}.teacher.checkpoint"
            )
    if recipe.teacher is None or recipe.teacher.store is None:
        return problems
    if kind not in DISTILLERS:
        return problems
    if not DISTILLERS.get(kind).reads_teacher_store:
        problems.append(
            f"{recipe.path}: teacher.store: kind {kind} reads more of the teacher than its logits (hidden states, "
            f"attention, or its scores of new text), which a store of top-k logits does not hold — use kind basic, "
            f"or give teacher.checkpoint"
        )
        return problems
    distillation = recipe.distillation
    if distillation.kd_weight > 0 and distillation.kd_loss not in TOKEN_KD_LOSSES:
        problems.append(
            f"{recipe.path}: distillation.kd_loss: `{distillation.kd_loss}` reads dense teacher logits, but teacher.store "
            f"holds the teacher's top-k distributions — use a token KD loss: {', '.join(sorted(TOKEN_KD_LOSSES))}"
        )
    if distillation.temperature_schedule.kind != "constant":
        problems.append(
            f"{recipe.path}: distillation.temperature_schedule.kind: `{distillation.temperature_schedule.kind}` changes the "
            f"temperature per row, but teacher.store holds the teacher's distributions at one capture temperature — "
            f"use `constant`"
        )
    if recipe.student is not None and recipe.student.init is not None:
        problems.append(
            f"{recipe.path}: student.init.extract: extraction cuts the student out of the teacher's weights, and "
            f"teacher.store has none — extract first with `brewer extract` on a recipe with teacher.checkpoint, then "
            f"give student.checkpoint"
        )
    return problems


def _needs_teacher_mass_everywhere(distillation: Any) -> bool:
    """Whether the divergence takes log p_T where the student has mass, so that p_T = 0 there (a
    `zero` tail) makes it infinite — clamped, a constant that swamps the rest. Reverse KL does
    (Σ p_S log(p_S / p_T)), and skew reverse KL at α = 0 is reverse KL. The others stay finite:
    forward KL and skew KL weigh by p_T (0 there); JSD(β) and skew reverse KL with α > 0 compare
    p_S with a mixture ≥ (1−β)·p_S or α·p_S, so a tail id costs at most −log(1−β) or −log α per
    unit of student mass; total variation is bounded by 1."""
    name = distillation.kd_loss
    return name == "reverse_kl" or (name == "skew_reverse_kl" and distillation.skew_alpha == 0)


def build_basic_store_run(recipe: Recipe, run_dir: Any, inputs_of: Callable[..., DistillerInputs]) -> Run:
    """Kind basic with `teacher.store`: the student, the data tokenized with the store's tokenizer,
    and a distiller that reads the teacher's logits from the store (see the module docstring).
    `inputs_of`: build.single.distiller_inputs (passed in: single imports this module)."""
    problems = store_problems(recipe)
    if problems:
        raise RecipeError(problems)
    where = f"{recipe.path}: teacher.store"
    directory = resolve_path(recipe.teacher.store, recipe)
    store = open_store(directory, where)
    manifest = store.manifest
    captured_task = manifest.data.get("task")
    if captured_task != recipe.task.kind:
        # Before the data: another task's examples would differ anyway, and say less about why.
        raise RecipeError(
            f"{recipe.path}: task.kind: {recipe.task.kind}, but teacher.store {directory} holds a teacher's next-token "
            f"distributions captured for task {captured_task} — a store stands in for the teacher of the task it was "
            f"captured for; set task.kind: {captured_task}, or give teacher.checkpoint"
        )
    distillation = recipe.distillation
    zero_tail = recipe.teacher.tail == "zero" and manifest.k < manifest.vocabulary_size
    if distillation.kd_weight > 0 and zero_tail and _needs_teacher_mass_everywhere(distillation):
        # Checked here, not with the recipe: a store of the whole vocabulary (k = V) has no tail.
        raise RecipeError(
            f"{recipe.path}: teacher.tail: `zero` gives every id outside the store's top {manifest.k} (of "
            f"{manifest.vocabulary_size:,}) probability 0, and kd_loss {distillation.kd_loss} weighs the student's "
            f"probability on those ids by −log p_T, there the floor ≈ 87 (log 0 clamped): the loss becomes that "
            f"constant times the student's mass outside the top {manifest.k}, not a divergence — set teacher.tail: "
            f"uniform (the remaining mass spread over the other ids), or use kd_loss forward_kl, jsd, tv, skew_kl, or "
            f"skew_reverse_kl with skew_alpha > 0"
        )
    tokenizer = load_tokenizer_dir(str(directory / TOKENIZER_DIRECTORY), recipe, "teacher.store")
    if tokenizer_hash(tokenizer) != manifest.tokenizer_hash:
        raise ModelError(
            f"{where}: the tokenizer in {directory / TOKENIZER_DIRECTORY} is not the one the store was captured with "
            f"(its hash differs from manifest.json's) — the store was changed after capture; run brewer capture again"
        )
    temperature = recipe.distillation.temperature
    if temperature != manifest.temperature:
        raise RecipeError(
            f"{recipe.path}: distillation.temperature: {temperature:g}, but the store {directory} holds the teacher's "
            f"distributions at the capture temperature {manifest.temperature:g} (softmax(z / {manifest.temperature:g}), "
            f"top {manifest.k}; the logits needed to soften them otherwise were not kept) — set "
            f"distillation.temperature: {manifest.temperature:g}, or capture again with --temperature {temperature:g}"
        )
    task = TASKS.get(recipe.task.kind)(recipe.task)
    data = task.prepare(recipe, tokenizer, None)
    fingerprint = data_fingerprint(data.train, fingerprint_settings(recipe))
    if fingerprint != manifest.data_fingerprint:
        captured = manifest.data.get("examples")
        raise DataError(
            f"{where}: the store {directory} was captured on other training data: this run's tokenized training split "
            f"({len(data.train):,} examples; data.train, data.max_length {recipe.data.max_length}, the task's settings, "
            f"the store's tokenizer) differs from the one in its manifest ({captured:,} examples, max_length "
            f"{manifest.data.get('max_length')}) — the teacher's distributions would belong to other text; re-run "
            f"`brewer capture` with this recipe's data, or point teacher.store at a store captured on it"
        )
    student = load_student(recipe.student, task, data.label_names, tokenizer, recipe, "student", "student")
    _check_vocabulary(recipe, student, manifest.vocabulary_size, len(tokenizer))
    teacher_store = TeacherStore(store, recipe.teacher.tail, *_teacher_loader(recipe, task, manifest.teacher))
    inputs = replace(inputs_of(recipe, task, data, student, []), teacher_store=teacher_store)
    return Run(recipe, run_dir, task, data, student, [], BasicDistiller(inputs, resolve_logit_kd(recipe.distillation)))


def _check_vocabulary(recipe: Recipe, student: LoadedModel, store_vocabulary: int, tokenizer_size: int) -> None:
    """The student's logits over the store's token ids: the same count, or the tokenizer's count
    (the store's) with padding rows past it, which the losses cut off."""
    vocabulary = student.model.config.vocab_size
    if vocabulary == store_vocabulary or (store_vocabulary == tokenizer_size and vocabulary > tokenizer_size):
        return
    raise ModelError(
        f"{recipe.path}: student: the student's vocabulary has {vocabulary:,} tokens, the teacher store's distributions "
        f"are over {store_vocabulary:,} — they must read the same token ids; build the student from a config "
        f"(`student.config`), which takes the store's tokenizer"
    )


def _teacher_loader(recipe: Recipe, task: Any, teacher: dict[str, Any]) -> tuple[Any, str]:
    """How to load the captured teacher for its eval metrics, or why they are unavailable."""
    path = teacher.get("path")
    if path is None or not resolve_path(path).is_dir():
        where = f"checkpoint {path} no longer exists" if path else f"{teacher.get('source')} is not a local checkpoint"
        return None, f"the teacher's eval metrics are unavailable: {where}"

    def load() -> LoadedModel:
        return load_checkpoint(path, task, None, recipe, "teacher.store", "teacher", shape_head=False)

    return load, ""
