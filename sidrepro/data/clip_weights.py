"""The CLIP metric weights (open_clip ViT-g-14 ``laion2b_s12b_b42k`` for the paper protocol, ``laion2b_s34b_b88k``
for the clean one) fetched into a local Hugging Face cache folder before evaluation, for clusters whose compute
nodes have no network.

The folder is the cache layout open_clip itself downloads into, so ``load_clip`` finds the weights with no change
when ``SIDREPRO_CLIP_CACHE`` points at it, and the metrics record names the protocol's own model and tag (passing a
weights file with ``--clip-weights`` would record an override). The commit is pinned in the hub lock file like any
model; since open_clip asks for ``main``, the cache's ``refs/main`` is pointed at the pinned commit, which is what
``hf_hub_download`` writes itself when ``main`` is at that commit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..teachers.hub import (
    HubError,
    HubOfflineError,
    download_to_cache,
    pinned_commit,
    record_lock,
    remote_snapshot,
)

logger = logging.getLogger(__name__)


def clip_hub_files(model: str, pretrained: str) -> tuple[str, list[str]]:
    """The hub repo of an open_clip ``model`` / ``pretrained`` tag and its weight file names in open_clip's order
    of preference (the safetensors twin first). ``ValueError`` for a tag open_clip does not know or that is not
    hosted on the hub."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ValueError(f"{pretrained!r} is not an open_clip pretrained tag of {model!r} (tags: {tags})")
    if not cfg.get("hf_hub"):
        raise ValueError(f"open_clip serves {model}/{pretrained} from {cfg.get('url') or '?'}, not the hub: "
                         f"pre-download it with open_clip.create_model(..., cache_dir=DIR) instead")
    from ..evaluate.clip_score import hub_weight_names

    return hub_weight_names(cfg["hf_hub"])


def _commit_of(path: Path) -> str:
    return Path(path).parent.name  # <cache>/models--org--name/snapshots/<commit>/<file>


def fetch_clip_weights(model: str, pretrained: str, cache_dir: Path, *, revision: str = "main",
                       lock_file: Path | None = None, update_lock: bool = False, token: str | bool | None = None,
                       endpoint: str | None = None) -> dict[str, Any]:
    """Make ``cache_dir`` hold the weights of ``model`` / ``pretrained`` at the pinned commit, where ``load_clip``
    (with ``SIDREPRO_CLIP_CACHE=cache_dir``) finds them, and describe them (model, tag, repo, commit, file).

    With the commit pinned in ``lock_file`` and its file in the cache, nothing is asked of the hub; without the
    hub, cached weights of the pinned commit (or any, without a lock entry) are used. Raises the ``HubError``
    subclasses of ``sidrepro.teachers.hub``."""
    from ..evaluate.clip_score import cached_weights

    cache_dir = Path(cache_dir)
    repo, names = clip_hub_files(model, pretrained)
    pinned = pinned_commit(repo, revision, lock_file, update_lock=update_lock)
    found = cached_weights(model, pretrained, cache_dir)

    def done(path: Path) -> dict[str, Any]:
        return {"model": model, "pretrained": pretrained, "repo_id": repo, "commit": _commit_of(path),
                "file": str(path), "cache_dir": str(cache_dir)}

    if found is not None and pinned is not None and _commit_of(found) == pinned:
        return done(found)
    unreachable: HubOfflineError | None = None
    try:
        remote = remote_snapshot(repo, pinned or revision, allow_patterns=names, token=token, endpoint=endpoint)
    except HubOfflineError as exc:
        unreachable = exc
    if unreachable is not None:  # outside the except block: no chained library exception on what is raised
        if found is not None and (pinned is None or _commit_of(found) == pinned) and not update_lock:
            logger.warning("The hub cannot be reached; using the cached %s/%s weights %s", model, pretrained, found)
            return done(found)
        raise unreachable
    name = next(n for n in names if n in remote.files)
    if lock_file is not None and (pinned is None or update_lock):
        record_lock(lock_file, repo, revision, remote.commit)
    path = download_to_cache(repo, name, remote.commit, cache_dir, size=remote.files[name], token=token,
                             endpoint=endpoint)
    from huggingface_hub.file_download import repo_folder_name

    # open_clip and load_clip look the file up through refs/main: point it at the pinned commit.
    ref = cache_dir / repo_folder_name(repo_id=repo, repo_type="model") / "refs" / "main"
    ref.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(ref, remote.commit)
    again = cached_weights(model, pretrained, cache_dir)
    if again is None or again.resolve() != path.resolve():
        raise HubError(f"{path} was downloaded but load_clip's cache look-up does not find it for "
                       f"{model}/{pretrained}.",
                       f"Delete {cache_dir} and re-run the fetch.", repo_id=repo)
    return done(path)
