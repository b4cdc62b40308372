"""`brewer push` and a recipe's `hub:` section: upload a run's final/ (model, tokenizer, model card)
to the Hugging Face Hub with huggingface_hub — `HfApi.create_repo(exist_ok=True)`, a branch for
`revision` when it is missing, then `upload_folder`. The token is huggingface_hub's own: HF_TOKEN,
or the one `hf auth login` stored.

A push writes nothing in the run but a missing model card: offline, without a token, with a refused
token or without network it ends in one clear paragraph (exit 2) and everything local stays as it was."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from brewer_cli.errors import BrewerError
from brewer_cli.model_card import CARD_FILE, write_model_cards


class HubError(BrewerError):
    """The Hub could not take the upload: offline, not logged in, a refused token, no network."""

    kind = "hub"


@dataclass(frozen=True)
class PushTarget:
    """What `brewer push` uploads: the model folder, and the run it belongs to (None for a model
    directory outside a run)."""

    folder: Path
    run_dir: Path | None


def push_target(target: Path) -> PushTarget:
    """A run directory → its final/ (a staged run's link resolved to the last stage's); a model
    directory (final/, best/, a checkpoint's student/, a multi-task run's final/) → itself."""
    target = Path(target)
    if not target.exists():
        raise HubError(
            f"{target}: no such run or model directory — give runs/<name> or a model directory such as runs/<name>/final"
        )
    folder = target / "final" if (target / "final").exists() and not (target / "config.json").is_file() else target
    folder = folder.resolve()
    if not (folder / "config.json").is_file() and not (folder / "tasks.json").is_file():
        raise HubError(
            f"{target}: not a run directory with a final/ model, nor a model directory (no config.json) — give "
            f"runs/<name> (its final/ is pushed) or a directory written by save_pretrained"
        )
    run_dir = folder.parent if (folder.parent / "summary.json").is_file() else None
    return PushTarget(folder, run_dir)


def push(target: Path, repo_id: str, private: bool = False, revision: str | None = None, console: Any = None) -> str:
    """Upload `target` (push_target) to the model repository `repo_id`, created when missing
    (`private` applies then only), on branch `revision` (created from main when missing). A run
    whose card is missing gets it first. Returns the URL of the commit."""
    where = push_target(target)
    if where.run_dir is not None and not (where.folder / CARD_FILE).is_file():
        write_model_cards(where.run_dir)
    files = sorted(str(path.relative_to(where.folder)) for path in where.folder.rglob("*") if path.is_file())
    api = HfApi()
    with _hub_errors(where.folder, repo_id):
        _check_login(api, where.folder, repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=where.folder,
            revision=revision,
            commit_message=f"brewer push: {_run_name(where)}",
        )
    url = str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}")
    if console is not None:
        console.print(f"pushed {where.folder} ({len(files)} files: {', '.join(files)}) → {url}", markup=False, soft_wrap=True)
    return url


def push_command(target: Path, repo_id: str, private: bool, revision: str | None) -> str:
    """The `brewer push` line that sends `target` (for messages that tell the user how to retry)."""
    options = [f"--repo-id {repo_id}"] + (["--private"] if private else []) + ([f"--revision {revision}"] if revision else [])
    return f"brewer push {target} {' '.join(options)}"


def push_finished_run(run_dir: Path, hub: Any, recipe_path: Path | None, console: Any = None) -> str:
    """A recipe's `hub:` at the end of `brewer distill`: push the finished run, and when that fails
    say that the run is complete locally and how to push it later."""
    try:
        return push(run_dir, hub.repo_id, hub.private, hub.revision, console)
    except HubError as error:
        raise HubError(
            f"{recipe_path or 'the recipe'}: hub.repo_id: {error.message}. The run itself is complete locally in "
            f"{run_dir} (final/, best/, summary.json, model cards), and nothing was deleted — push it later with "
            f"`{push_command(run_dir, hub.repo_id, hub.private, hub.revision)}`"
        ) from error


def check_push_possible(hub: Any, recipe_path: Path | None) -> None:
    """Before a run whose recipe says `hub:` starts: a push that cannot happen (offline mode, no
    token) is refused now, not after hours of training. Reads local settings only: whether the
    Hub accepts the token is known at the push itself."""
    where = f"{recipe_path or 'the recipe'}: hub.repo_id: the run would push to {hub.repo_id} when it ends, but "
    remedy = "; or remove `hub:` and push later with `brewer push RUN --repo-id …`"
    if constants.HF_HUB_OFFLINE:
        raise HubError(
            where + "offline mode is on (HF_HUB_OFFLINE is set) — unset it where the network reaches huggingface.co" + remedy
        )
    if get_token() is None:
        raise HubError(
            where + "brewer is not logged in to the Hugging Face Hub (no token in HF_TOKEN and none stored by "
            "`hf auth login`) — log in with `hf auth login` (a token with write access) or set HF_TOKEN" + remedy
        )


def _check_login(api: HfApi, folder: Path, repo_id: str) -> None:
    """A token is there and the Hub accepts it — checked before anything is created."""
    if get_token() is None:
        offline = " (and offline mode is on: HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""
        raise HubError(
            f"pushing {folder} to the Hub repository {repo_id} failed: not logged in to the Hugging Face "
            f"Hub{offline} — no token in HF_TOKEN and none stored by `hf auth login`; log in with `hf auth login` "
            f"(a token with write access) or set HF_TOKEN, and push again"
        )
    api.whoami()


@contextmanager
def _hub_errors(folder: Path, repo_id: str) -> Iterator[None]:
    """Turns what the Hub answers into one paragraph. Every call inside is a network call to the
    Hub, so any failure there means the upload did not happen: offline mode, a refused token or
    repository, or a network error of the HTTP client huggingface_hub uses (whose exception
    classes are its own, hence `Exception`)."""
    try:
        yield
    except HubError:
        raise
    except OfflineModeIsEnabled as error:
        raise HubError(
            f"pushing {folder} to the Hub repository {repo_id} failed: the Hub cannot be reached, offline mode is on "
            f"(HF_HUB_OFFLINE=1) — unset HF_HUB_OFFLINE where the network reaches huggingface.co, and push again"
        ) from error
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        if status in (401, 403):
            reason = (
                f"the Hub refused the token ({status}): it is invalid, expired or may not write there — log in "
                f"again with `hf auth login` using a token with write access, or set HF_TOKEN"
            )
        else:
            reason = f"the Hub answered: {_first_line(error)} — check the repository id and your rights to it"
        raise HubError(f"pushing {folder} to the Hub repository {repo_id} failed: {reason}") from error
    except Exception as error:
        raise HubError(
            f"pushing {folder} to the Hub repository {repo_id} failed: the Hub could not be reached "
            f"({type(error).__name__}: {_first_line(error)}) — check the network, and push again"
        ) from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _run_name(where: PushTarget) -> str:
    if where.run_dir is None:
        return where.folder.name
    summary = json.loads((where.run_dir / "summary.json").read_text(encoding="utf-8"))
    return str(summary.get("name") or where.run_dir.name)
