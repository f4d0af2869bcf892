"""A ``datasets`` builder for facesynth folders, with label filters by name.

    >>> from facesynth.builder import Facesynth
    >>> b = Facesynth(data_dir="demo", filters={"emotion": "happy", "gender": ["female"]})
    >>> b.download_and_prepare()
    >>> ds = b.as_dataset(split="train")

Filters by name become Parquet pushdown filters on ClassLabel ids, so row groups
of other labels are skipped unread. The cache is keyed by the manifest's content
fingerprint (the sha256 of every shard), so regenerated data is never served stale.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
from datasets.builder import Key
from datasets.naming import camelcase_to_snakecase

from .errors import OutputError
from .folder.pins import looks_local
from .folder.reading import (check_complete, content_fingerprint, hub_url, is_url, read_manifest, remote_manifest,
                             shard_paths, wait_for_writer)
from .folder.schema import features_of, label_ids
from .recipe import recipe_of

logger = logging.getLogger(__name__)


def filter_expression(recipe, filters: dict[str, Any] | None) -> pads.Expression | None:
    """``{"emotion": "happy", "gender": ["female"]}`` -> a pyarrow expression on label ids."""
    if not filters:
        return None
    filters = dict(filters)
    identity = filters.pop("identity", None) if recipe.identities is not None else None
    try:
        ids = label_ids(recipe, filters)
    except KeyError as exc:
        raise OutputError(f"filters: {exc.args[0]}") from None
    expr = None
    for attr, values in ids.items():
        term = pads.field(attr).isin(values)
        expr = term if expr is None else expr & term
    if identity is not None:  # identity sets: the rows of these identities
        wanted = [identity] if isinstance(identity, str) else list(identity)
        if not wanted or not all(isinstance(i, str) for i in wanted):
            raise OutputError(f"filters: identity: give an identity id or a list of them (got {identity!r:.60})")
        term = pads.field("identity").isin(wanted)
        expr = term if expr is None else expr & term
    return expr


@dataclass
class FacesynthConfig(datasets.BuilderConfig):
    """BuilderConfig for a facesynth folder.

    Args:
        filters: label filters by name, e.g. ``{"emotion": "happy", "gender": ["female"]}``.
        columns: columns to load; all by default.
    """

    filters: dict[str, Any] | None = None
    columns: list[str] | None = None


class Facesynth(datasets.ArrowBasedBuilder):
    """Builds a facesynth dataset folder (``data/*.parquet`` + ``manifest.json``)."""

    BUILDER_CONFIG_CLASS = FacesynthConfig
    DEFAULT_CONFIG_NAME = "default"

    @property
    def builder_configs(self) -> dict[str, FacesynthConfig]:
        """``default`` and one config per primary label of this dataset (set up in ``__init__``)."""
        return {config.name: config for config in self.BUILDER_CONFIGS}

    def __init__(self, *args, data_dir: str | None = None, config_name: str | None = None, partial: bool = False,
                 **kwargs):
        """``data_dir``: a dataset folder, or an fsspec URL of one (``hf://datasets/ORG/NAME@REV``), which is
        read lazily: the manifest, then only the files and row groups that the config and filters need.
        A folder whose last run stopped before it finished is refused unless ``partial``."""
        if not data_dir:
            raise OutputError("data_dir: give the dataset folder")
        self.remote = is_url(data_dir)
        self.root = data_dir.rstrip("/") if self.remote else Path(data_dir)
        self._fragments: dict[str, pads.ParquetFileFragment] = {}
        if not self.remote:
            wait_for_writer(self.root, False)  # a folder being written would give partial splits
        self.manifest = remote_manifest(self.root) if self.remote else read_manifest(self.root)
        check_complete(self.root, self.manifest, partial)
        self.recipe = recipe_of(self.manifest)
        filter_expression(self.recipe, kwargs.get("filters"))  # bad filters are one line before anything is read
        primary = self.recipe.primary
        labels = list(self.recipe.attributes[primary].values)
        # One config per primary label, as the card declares them, and "default" over every row.
        self.BUILDER_CONFIGS = [FacesynthConfig(name="default", description="every row"), *(
            FacesynthConfig(name=label, description=f"the rows whose {primary} is {label}",
                            filters={primary: label}) for label in labels)]
        if config_name not in (None, *self.builder_configs):
            raise OutputError(f"config_name: '{config_name}' is not a config of this dataset "
                              f"({', '.join(self.builder_configs)})")
        if config_name in labels and kwargs.get("filters") is not None:  # the label's filter, and the caller's
            filters = dict(kwargs["filters"])
            if filters.get(primary, config_name) not in (config_name, [config_name]):
                raise OutputError(f"filters: {primary}={filters[primary]!r} contradicts config '{config_name}'")
            kwargs["filters"] = {**filters, primary: config_name}
        kwargs["config_name"] = config_name
        kwargs.setdefault("dataset_name", f"facesynth_{camelcase_to_snakecase(type(self).__name__)}")
        kwargs.setdefault("hash", content_fingerprint(self.manifest))
        super().__init__(*args, data_dir=str(self.root), **kwargs)

    def _files(self) -> dict[str, str]:
        """Each shard's path (a URL for a remote dataset), in name order."""
        if self.remote:
            return {name: f"{self.root}/{name}" for name in sorted(self.manifest.shards)}
        return {name: str(path) for name, path in shard_paths(self.root, self.manifest).items()}

    @functools.cached_property
    def _filesystem(self) -> pafs.FileSystem:
        """Where the shards are read from: the local disk, or the URL's fsspec filesystem (made once)."""
        if not self.remote:
            return pafs.LocalFileSystem()
        import fsspec

        return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec.filesystem(self.root.split("://", 1)[0])))

    def _info(self) -> datasets.DatasetInfo:
        features = features_of(self.recipe, self.manifest)  # an older folder's columns
        if self.config.columns is not None:
            unknown = [c for c in self.config.columns if c not in features]
            if unknown:
                raise OutputError(f"columns: unknown column(s) {', '.join(unknown)}")
            features = datasets.Features({c: features[c] for c in self.config.columns})
        return datasets.DatasetInfo(description=self.recipe.description, features=features)

    def _split_generators(self, dl_manager):
        by_split: dict[str, list[str]] = {}
        wanted = (self.config.filters or {}).get(self.recipe.primary)
        wanted = {wanted} if isinstance(wanted, str) else set(wanted or [])
        for name, path in self._files().items():
            if wanted and name.count("/") == 2 and name.split("/")[1] not in wanted:
                continue  # another label's folder: not even opened
            by_split.setdefault(self.manifest.shards[name]["split"], []).append(path)
        expr = filter_expression(self.recipe, self.config.filters)
        if expr is not None:  # a split with no matching row cannot be materialised: leave it out
            exact = set(self.config.filters) == {self.recipe.primary}
            by_split = {k: v for k, v in by_split.items() if self._has_rows(v, expr, exact)}
        order = list(self.recipe.splits)  # train, validation, test
        return [datasets.SplitGenerator(name=split, gen_kwargs={"files": by_split[split]})
                for split in sorted(by_split, key=lambda s: order.index(s) if s in order else len(order))]

    def _fragment(self, file: str) -> pads.ParquetFileFragment:
        """One fragment per file with its footer read once, for pruning and for reading."""
        if file not in self._fragments:
            path = file.split("://", 1)[1] if self.remote else file
            fragment = pads.ParquetFileFormat().make_fragment(path, filesystem=self._filesystem)
            fragment.ensure_complete_metadata()
            self._fragments[file] = fragment
        return self._fragments[file]

    def _has_rows(self, files: list[str], expr: pads.Expression, exact: bool) -> bool:
        """Whether any row matches, from row-group statistics where they decide it.

        A row group holds one primary label, so its statistics are exact for a filter on that
        label alone; other filters count the rows of the candidate row groups.
        """
        for file in files:
            fragment = self._fragment(file).subset(filter=expr)
            if fragment.row_groups and (exact or fragment.count_rows(filter=expr)):
                return True
        return False

    def _generate_tables(self, files: list[str]):
        expr = filter_expression(self.recipe, self.config.filters)
        columns = list(self.info.features)  # the declared columns only, whatever else a shard holds
        for file_idx, file in enumerate(files):
            fragment = self._fragment(file)
            if expr is not None:  # skip row groups whose statistics exclude the labels
                fragment = fragment.subset(filter=expr)
            if not fragment.row_groups:
                continue
            batches = fragment.to_batches(columns=columns, filter=expr, batch_readahead=0,
                                          fragment_readahead=0)
            for batch_idx, batch in enumerate(batches):
                if batch.num_rows:
                    yield Key(file_idx, batch_idx), pa.Table.from_batches([batch])


def iter_sets(dataset, columns: list[str] | None = None):
    """Each identity set of a loaded split (a ``datasets.Dataset``), as a list of rows, the reference first and the
    other members in plan order: ``for members in facesynth.iter_sets(ds["test"]): ...``."""
    if not isinstance(dataset, datasets.Dataset):
        raise OutputError(f"iter_sets: give a loaded split (a datasets.Dataset), not {type(dataset).__name__}; a "
                          "streamed split's sets span several files: load it without streaming")
    if "identity" not in dataset.column_names:
        raise OutputError("iter_sets: this dataset has no identity sets (no identity column)")
    keys = dataset.select_columns(["identity", "sample_id"]).to_dict()
    order = sorted(range(len(dataset)), key=lambda i: (keys["identity"][i], keys["sample_id"][i]))
    ordered = dataset.select(order)
    if columns is not None:
        ordered = ordered.select_columns(list(dict.fromkeys(["identity", "sample_id", *columns])))
    members: list[dict] = []
    for row in ordered:
        if members and row["identity"] != members[0]["identity"]:
            yield members
            members = []
        members.append(row)
    if members:
        yield members


def load(dir_or_repo: str, split: str | None = None, streaming: bool = False, revision: str | None = None,
         columns: list[str] | None = None, wait: bool | float = False, partial: bool = False, **filters):
    """Load a local folder, an fsspec URL or a Hub dataset repo made by facesynth, filtered by label names.

    A Hub repo is read lazily over HTTP, as ``load_dataset`` reads Parquet: the manifest, then only
    the matching label's files and, within them, only the row groups the filters can match. A local
    folder that a facesynth process is writing is refused in one line, or waited for with ``wait``
    (``True``, or seconds). A folder whose last run stopped before it finished is refused in one line unless
    ``partial=True`` asks for the shards finished so far.
    """
    if not isinstance(dir_or_repo, (str, Path)):
        raise OutputError(f"dir_or_repo: give a folder, a URL or a Hub id (ORG/NAME), not {type(dir_or_repo).__name__}")
    for name, value in (("split", split), ("revision", revision)):
        if value is not None and not isinstance(value, str):
            raise OutputError(f"{name}: must be text (got {type(value).__name__})")
    if columns is not None and (isinstance(columns, str) or not all(isinstance(c, str) for c in columns)):
        raise OutputError(f"columns: give a list of column names (got {columns!r:.60})")
    if not isinstance(wait, (bool, int, float)):
        raise OutputError(f"wait: True, False or seconds (got {type(wait).__name__})")
    name = str(dir_or_repo)
    local = Path(name).is_dir()
    if not local and not is_url(name) and looks_local(name):
        raise OutputError(f"'{name}': no such folder (a Hub dataset is named ORG/NAME)")
    if local:
        wait_for_writer(Path(name), wait)
    root = name if local or is_url(name) else hub_url(name, revision)
    builder = Facesynth(data_dir=str(root), filters=filters or None, columns=columns, partial=bool(partial))
    if split is not None:
        held = sorted({r["split"] for r in builder.manifest.shards.values()}, key=list(builder.recipe.splits).index)
        if split not in held:
            raise OutputError(f"split: '{split}' is not a split of '{name}' ({', '.join(held) or 'none yet'})")
    try:
        if streaming:
            return builder.as_streaming_dataset(split=split)
        builder.download_and_prepare()
        return builder.as_dataset(split=split)
    except ValueError as exc:  # the split holds no row the filters match
        if not str(exc).startswith("Unknown split"):
            raise
        raise OutputError(f"split: '{split}' holds no row with {filters} in '{name}'") from None


__all__ = ["Facesynth", "FacesynthConfig", "content_fingerprint", "filter_expression", "iter_sets", "load",
           "shard_paths"]
