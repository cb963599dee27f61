"""The creative engine's model files on disk: which files, where they are, what they hash to.

* :mod:`pipeline.models.manifest` — ``resources/models.json``, validated: the files Clarity runs,
  where they come from, their sizes, hashes and licences;
* :mod:`pipeline.models.store` — finding those files (and LoRAs, embeddings) in Clarifier's
  folder and in A1111 or ComfyUI installs, and resolving a request to the paths the engine loads;
* :mod:`pipeline.models.files` — hashes (cached by path, size and mtime), format checks that run
  no code, and the per-folder records of downloaded links.

* :mod:`pipeline.models.upkeep` — checking files again, removing Clarifier's own, and where an
  unfinished download is kept.

No HTTP and no torch here: the window and the CLI use this package (downloading is
:mod:`app.models`, since the engine knows no transport). The names below are the face of finding
and resolving.
"""

from __future__ import annotations

from pipeline.models.store import (
    ROLE_FOLDERS,
    ROLES,
    Missing,
    ModelCheck,
    ModelEntry,
    ResolvedModels,
    entry_by_id,
    find_entry,
    find_models,
    human_size,
    is_link,
    load_manifest,
    locate,
    missing_message,
    models_dir,
    resolve_models,
    role_folders,
    search_roots,
)

__all__ = [
    "ROLES",
    "ROLE_FOLDERS",
    "Missing",
    "ModelCheck",
    "ModelEntry",
    "ResolvedModels",
    "entry_by_id",
    "find_entry",
    "find_models",
    "human_size",
    "is_link",
    "load_manifest",
    "locate",
    "missing_message",
    "models_dir",
    "resolve_models",
    "role_folders",
    "search_roots",
]
