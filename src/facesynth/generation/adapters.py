"""LoRA adapters: checked, pinned, loaded with diffusers' PEFT backend and fused into the model.

An adapter is a Hub repo (``owner/name``, or ``owner/name/path/in/repo.safetensors`` for one file of a repo
that holds several) or a local ``.safetensors`` file or folder. ``--lora SOURCE[@WEIGHT]`` (repeatable)
replaces a recipe's ``loras:`` list.

- **Pinned.** A local file is known by its sha256 (in the run's parameters, so a changed file is a changed
  dataset); a Hub adapter by the commit it resolved to, recorded in ``manifest.loras`` and loaded again by a
  resumed run and by ``reproduce``.
- **Safetensors only.** Pickle files are refused, and so is a file with no LoRA weights in its header.
- **Fused.** Every adapter is loaded under its own name, weighted with ``set_adapters`` and fused into the
  UNet and text encoder (``safe_fusing``: NaN weights are refused), then the adapter layers are dropped, so a
  step costs what it costs without adapters. Runs always fuse, so the same adapters at the same weights give
  the same pixels in every run and in ``reproduce``; fused output differs from unfused PEFT layers by float
  rounding only (measured in ``tests/test_adapters.py``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import ModelError, PlanError, first_line
from ..recipe import Lora, Recipe, first_error
from ..folder.writer import sha256_file
from .quiet import quiet

logger = logging.getLogger(__name__)

DEFAULT_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
PICKLE = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class Adapter:
    """One adapter as a run uses it and the manifest records it."""

    name: str  # the Hub repo, or the local file's name
    kind: str  # hub | file
    weight: float
    where: str  # where it was given, for error lines (`--lora X`, `recipe.yaml: loras[0]`)
    file: str | None = None  # the weights file inside the repo (None: the repo's only one, found on download)
    revision: str | None = None
    commit: str | None = None
    sha256: str | None = None
    path: str | None = None  # the weights on this machine (kept for resume and reproduce, dropped by push)

    def parameter(self) -> dict[str, Any]:
        """What decides the pixels: the adapter's identity (a file's content, a repo's file and revision) and weight."""
        if self.kind == "file":
            return {"name": self.name, "sha256": self.sha256, "weight": self.weight}
        return {"name": self.name, "file": self.file, "revision": self.revision, "weight": self.weight}

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "where"}

    def describe(self) -> str:
        pin = f"commit {self.commit[:12]}" if self.commit else f"sha256 {(self.sha256 or '')[:12]}"
        return f"{self.name}{'/' + self.file if self.kind == 'hub' and self.file else ''} @ {self.weight:g} ({pin})"


def chosen(loras: Sequence[str], recipe: Recipe, recipe_file: str) -> list[tuple[Lora, str]]:
    """The adapters a run uses, each with where it was given: ``--lora`` replaces the recipe's list."""
    from pydantic import ValidationError

    if not loras:
        return [(spec, f"{recipe_file}: loras[{i}]") for i, spec in enumerate(recipe.loras)]
    out = []
    for text in loras:
        try:
            out.append((Lora.model_validate(text), f"--lora {text}"))
        except ValidationError as exc:
            raise PlanError(f"--lora {text}: {first_error(exc)}") from None
    return out


def check(specs: Sequence[tuple[Lora, str]]) -> list[Adapter]:
    """Every adapter checked as far as it can be without loading a model: a local file read, a Hub one named."""
    return [_local(spec, where) if _is_local(spec.source) else _hub(spec, where) for spec, where in specs]


def _is_local(source: str) -> bool:
    """A path: absolute, starting with ``.`` or ``~``, with a ``..`` part or a backslash, something that exists,
    or a weights file one folder down at most; ``owner/name[/path/in/repo.safetensors]`` otherwise names a Hub
    repo."""
    if source.startswith(("/", ".", "~")) or "\\" in source or ".." in source.split("/"):
        return True
    if Path(source).expanduser().exists():
        return True
    return source.count("/") < 2 and source.lower().endswith(PICKLE + (".safetensors",))


def _local(spec: Lora, where: str) -> Adapter:
    path = Path(spec.source).expanduser()
    suffix = path.suffix.lower()  # .SAFETENSORS is safetensors too
    if suffix in PICKLE or (path.is_file() and suffix != ".safetensors"):
        raise ModelError(f"{where}: only .safetensors adapters are loaded, never pickle files")
    if not path.exists():
        raise ModelError(f"{where}: no such file or folder")
    if path.is_dir():
        path = _pick(path, [p.name for p in path.iterdir() if p.is_file()], where)
    _check_header(path, where)
    return Adapter(path.name, "file", spec.weight, where, sha256=sha256_file(path), path=str(path.resolve()))


def _hub(spec: Lora, where: str) -> Adapter:
    parts = spec.source.split("/")
    if len(parts) < 2 or not all(parts):
        raise PlanError(f"{where}: not a local file or folder, nor a Hub repo (owner/name[/file.safetensors])")
    file = "/".join(parts[2:]) or None
    if file is not None and not file.lower().endswith(".safetensors"):
        raise ModelError(f"{where}: only .safetensors adapters are loaded, never pickle files")
    return Adapter("/".join(parts[:2]), "hub", spec.weight, where, file=file, revision=spec.revision)


def _pick(folder: Path, names: list[str], where: str) -> Path:
    """The one safetensors file of a folder (or snapshot), preferring diffusers' own name."""
    weights = sorted(n for n in names if n.lower().endswith(".safetensors"))
    if DEFAULT_FILE in weights:
        return folder / DEFAULT_FILE
    if len(weights) == 1:
        return folder / weights[0]
    if not weights:
        raise ModelError(f"{where}: has no safetensors weights (pickle files are never loaded)")
    raise ModelError(f"{where}: holds {len(weights)} adapters ({', '.join(weights[:5])}); name one of them")


def _check_header(path: Path, where: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: one line
        raise ModelError(f"{where}: not a readable safetensors file ({first_line(exc)})") from None
    if not any("lora" in k.lower() for k in keys):
        raise ModelError(f"{where}: holds no LoRA weights (none of its {len(keys)} tensors is named lora_*); "
                         "a full checkpoint goes to --model")
    import re

    pairs = {}  # each low-rank pair is a down (A) and an up (B) weight of one layer
    for key in keys:
        found = re.search(r"(lora_A|lora_B|lora_down|lora_up|lora\.down|lora\.up)", key)
        if found:
            half = "down" if found[1] in ("lora_A", "lora_down", "lora.down") else "up"
            pairs.setdefault(key[:found.start()] + "#" + key[found.end():], set()).add(half)
    broken = sorted(k.replace("#", "lora_*") for k, halves in pairs.items() if len(halves) < 2)
    if broken:
        raise ModelError(f"{where}: {len(broken)} of its LoRA layers lack their other half (each needs a down or "
                         f"lora_A and an up or lora_B weight), e.g. {broken[0]}; the file is incomplete")


def fetch(adapters: list[Adapter], recorded: Sequence[dict[str, Any]] = ()) -> list[Adapter]:
    """Hub adapters downloaded, each at the commit the manifest recorded for it when there is one."""
    from ..folder import snapshots

    pins = {(r["name"], r.get("revision")): r for r in recorded if r.get("kind") == "hub"}
    for a in adapters:
        if a.kind != "hub" or a.path:
            continue
        pin = pins.get((a.name, a.revision))
        file = a.file or (pin or {}).get("file")
        folder, a.commit = snapshots.fetch(a.name, (pin or {}).get("commit") or a.revision, a.where,
                                           [file] if file else ["*.safetensors"])
        path = folder / file if file else _pick(folder, [str(p.relative_to(folder)) for p in folder.rglob("*")
                                                         if p.is_file()], a.where)
        if not path.is_file():
            raise ModelError(f"{a.where}: '{a.name}' has no file '{file}' at {a.commit[:12]}")
        _check_header(path, a.where)
        a.file, a.path = str(path.relative_to(folder)), str(path)
        a.sha256 = sha256_file(path)
    return adapters


def from_manifest(manifest) -> list[Adapter]:
    """The adapters a folder was made with, as its manifest recorded them, checked to be the same bytes."""
    out = []
    for i, r in enumerate(manifest.get("loras") or []):
        a = Adapter(**{**r, "where": f"manifest.json: loras[{i}] ({r['name']})"})
        if a.kind == "hub":
            a.path = None
            fetch([a], [r])
        if not a.path or not Path(a.path).is_file():
            raise ModelError(f"{a.where}: the adapter file is not on this machine ({a.path}); put it back there")
        if sha256_file(Path(a.path)) != r["sha256"]:
            raise ModelError(f"{a.where}: the adapter file changed since the folder was made (sha256 differs)")
        out.append(a)
    return out


def apply(pipe, adapters: list[Adapter], model: str) -> None:
    """Load every adapter under its own name, weight them, fuse them into the model and drop the adapter layers."""
    if not adapters:
        return
    names = []
    with quiet():
        for i, a in enumerate(adapters):
            name = f"lora{i}"
            try:
                pipe.load_lora_weights(str(Path(a.path).parent), weight_name=Path(a.path).name, adapter_name=name)
            except RuntimeError as exc:
                raise ModelError(f"{a.where}: does not fit the model '{model}' ({_mismatch(exc)})") from None
            except ValueError as exc:
                if "PEFT" in str(exc):
                    raise ModelError(f"{a.where}: adapters need the peft package (pip install peft)") from None
                raise ModelError(f"{a.where}: not a LoRA adapter diffusers can read ({first_line(exc)})") from None
            if not any(name in listed for listed in pipe.get_list_adapters().values()):
                raise ModelError(f"{a.where}: does not fit the model '{model}' (none of its weights names a layer "
                                 "of this model: an adapter for another model family?)")
            names.append(name)
        pipe.set_adapters(names, adapter_weights=[a.weight for a in adapters])
        try:
            pipe.fuse_lora(adapter_names=names, lora_scale=1.0, safe_fusing=True)
        except ValueError as exc:
            raise ModelError(f"{adapters[0].where}: fusing the adapters failed ({first_line(exc)})") from None
        pipe.unload_lora_weights()
    logger.info("fused %d LoRA adapter(s): %s", len(adapters), "; ".join(a.describe() for a in adapters))


def _mismatch(exc: RuntimeError) -> str:
    """'N of its weights have another shape, e.g. LAYER: [a, b] in the adapter, [c, d] in the model'."""
    import re

    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip().startswith("size mismatch for ")]
    if not lines:
        return first_line(exc)
    layer = lines[0].removeprefix("size mismatch for ").partition(":")[0]
    layer = re.sub(r"\.lora_[AB]\.[^.]+\.weight$", "", layer)  # the model's layer, not the adapter's own name
    shapes = re.findall(r"torch\.Size\((\[[^\]]*\])\)", lines[0])
    detail = f", e.g. {layer}: {shapes[0]} in the adapter, {shapes[1]} in the model" if len(shapes) == 2 else ""
    return f"{len(lines)} of its weights have another shape{detail}"
