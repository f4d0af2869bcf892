"""Hub snapshots pinned to a commit, for the models a run loads beside the generator (verifiers, adapters)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError, first_line


def fetch(name: str, revision: str | None, where: str, patterns: list[str]) -> tuple[Path, str]:
    """The files of Hub repo ``name`` matching ``patterns`` at ``revision``, and the commit they are at.

    Offline (``HF_HUB_OFFLINE=1``) only the local cache is read. Every failure is one line naming ``where``.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError

    try:
        folder = Path(snapshot_download(name, revision=revision, local_files_only=constants.HF_HUB_OFFLINE,
                                        allow_patterns=patterns))
    except GatedRepoError:
        raise ModelError(f"{where}: '{name}' is gated: accept its terms on its Hub page, then log in "
                         "(`hf auth login`) or set HF_TOKEN") from None
    except Exception as exc:  # offline, unknown repo, no such revision: one line
        raise ModelError(f"{where}: cannot fetch '{name}' ({first_line(exc)}); give a local path or check the "
                         "name and your token (`hf auth login`)") from None
    return folder, folder.name
