"""``facesynth validate``: check a dataset folder against its manifest, its plan and its card.

Every problem is collected (nothing stops at the first), so one run lists them all:
unreadable or altered shards, a schema that is not the declared features, rows
that are not the plan's (missing, extra, duplicated, mislabelled, in the wrong
split), images that do not decode at their declared size, a card whose YAML
disagrees with the data, and, with ``reproduce=K``, rows that do not regenerate.
Shards are read one row group at a time, so memory stays flat.
"""

from __future__ import annotations

import io
import math
import logging
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Features
from PIL import Image

from .folder.reading import read_manifest
from .errors import OutputError, PlanError, shorten
from .folder.files import inside, is_temp_file
from .folder.lazy import has_shard, shard_file
from .folder.state import check_shards
from .plan.layout import layout as shard_layout
from .plan import Plan
from .recipe import SPEEDUPS, recipe_of, switch_step
from .folder.schema import features_of, read_provenance, verified_columns
from .review.verdicts import VERDICTS, VerdictError, review_state

logger = logging.getLogger(__name__)

IMAGE_THREADS = 4


@dataclass
class Problem:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Report:
    root: Path
    problems: list[Problem] = field(default_factory=list)
    rows: int = 0
    shards: int = 0
    images: int = 0
    reproduced: int = 0
    damaged: set[str] = field(default_factory=set)  # shards that are missing, altered or unreadable
    unread: set[str] = field(default_factory=set)  # shards whose rows could not be read

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, where: str, message: str, damaged: bool = False) -> None:
        self.problems.append(Problem(where, message))
        if damaged:
            self.damaged.add(where)


def validate(root: str | Path, reproduce: int = 0, seed: int = 0, images: bool = True, device: str = "auto",
             dtype: str | None = None, progress: bool = False) -> Report:
    """Check everything; return a report listing every problem found."""
    root = Path(root)
    from .folder.reading import wait_for_writer

    wait_for_writer(root, False, "validate it")  # a folder being written is half-made by design: one line
    manifest = read_manifest(root, current=True)
    report = Report(root)
    recipe = recipe_of(manifest)
    if not manifest.get("complete"):
        report.add("manifest.json", "generation has not finished; run the same generate command to resume")
    layout = manifest.get("layout", [])
    for name in layout:
        if name not in manifest.shards:
            report.add(name, "in the layout but not finished (no manifest record)")
    for name in manifest.shards:
        if name not in layout:
            report.add(name, "recorded in the manifest but not part of the layout")
    temp = sorted({p for folder, pattern in ((root, ".*"), (root / "data", "**/.*"), (root / "assets", "**/.*"))
                   if folder.is_dir() for p in folder.glob(pattern) if p.is_file() and is_temp_file(p)})
    for path in temp:
        report.add(path.relative_to(root).as_posix(), "temp file left by an interrupted write (not part of the "
                                                      "dataset); delete it")
    on_disk = ({p.relative_to(root).as_posix() for p in (root / "data").rglob("*") if p.is_file()}
               if (root / "data").exists() else set())
    for name in sorted(on_disk - set(manifest.shards) - {p.relative_to(root).as_posix() for p in temp}):
        report.add(name, "file in data/ that the manifest does not record (stale or foreign)")
    for name, why in check_shards(root, manifest, sorted(manifest.shards)).items():
        report.add(name, f"damaged: {why}; run generate with --repair to regenerate it", damaged=True)

    try:
        plan = Plan(recipe, manifest["plan"]["num_samples"], manifest["plan"]["seed"], manifest["plan"]["candidates"])
    except PlanError as exc:  # the plan's own words name generate's options; here the manifest is at fault
        why = str(exc).split(": ", 1)[-1]
        raise OutputError(f"'{root / 'manifest.json'}': damaged: its plan ({manifest['plan']['num_samples']} samples, "
                          f"seed {manifest['plan']['seed']}) cannot be rebuilt ({why}), so the rows cannot be checked "
                          "against it") from None
    expected = {s.sample_id: s for s in plan.samples}
    per_shard = manifest["plan"].get("rows_per_shard")
    usable = isinstance(per_shard, int) and per_shard > 0
    held = {t.name: t.samples for t in shard_layout(plan, per_shard)} if usable else {}
    features = features_of(recipe, manifest)
    names = {a: list(attr.values) for a, attr in recipe.attributes.items()}
    seen: Counter = Counter()
    cells: Counter = Counter()
    params = manifest.get("parameters") or {}
    claims = {"gates": params.get("quality") or {}, "overrides": params.get("overrides") or {},
              "verify": {a: spec.get("min_probability", 0.0) for a, spec in (params.get("verify") or {}).items()},
              "verify_gate": params.get("verify_mode") == "gate",
              "candidates": manifest["plan"]["candidates"]}  # what the run says of every row
    report.unread = set()
    for name in manifest.shards:
        try:
            if not has_shard(root, name):
                report.unread.add(name)
        except OutputError as exc:
            report.add(name, str(exc).split(": ", 1)[-1], damaged=True)
            report.unread.add(name)
    files = [n for n in sorted(manifest.shards) if n not in report.unread]
    bar = _bar(progress, sum(manifest.shards[n]["rows"] for n in files))
    with ThreadPoolExecutor(IMAGE_THREADS) as pool:
        for name in files:
            _check_shard(root, name, manifest.shards[name], features, names, expected, seen, cells, report, images,
                         pool, bar, claims)
    bar.close()
    # the rows of an unreadable shard are reported with it, once, not again as missing or miscounted
    lost = {s.sample_id: s for name in report.unread for s in held.get(name, [])}
    for sid, n in sorted(seen.items()):
        if n > 1:
            report.add(sid, f"sample_id appears {n} times")
    missing = [sid for sid in expected if sid not in seen and sid not in lost]
    if missing and manifest.get("complete"):
        more = ", ..." if len(missing) > 8 else ""
        report.add("data/", f"{len(missing)} planned rows are missing: {', '.join(missing[:8])}{more}")
    planned = Counter((s.split, *s.labels.values()) for s in plan.samples if s.sample_id not in lost)
    for cell in sorted(set(planned) | set(cells)):
        if planned[cell] != cells[cell] and manifest.get("complete"):
            report.add(f"{cell[0]} {'/'.join(cell[1:])}", f"{cells[cell]} rows, the plan has {planned[cell]}")
    if recipe.identities is not None:
        _check_sets(root, files, expected, recipe.identities, report)
    _check_review(root, manifest, expected, report)
    report.shards = len([n for n in files if n not in report.unread])
    report.rows = sum(seen.values())
    if report.damaged:
        report.add("README.md", "not compared with the data while shards are damaged")
    else:
        _check_card(root, report)
    _check_evaluation(root, manifest, report)
    from .dataset_card.audit import stale as audit_stale

    why = audit_stale(root, manifest)
    if why:
        report.add("audit/audit.json", why)
    if reproduce:
        _check_reproduction(root, manifest, sorted(seen), reproduce, seed, device, dtype, report)
    return report


def _check_evaluation(root: Path, manifest, report: Report) -> None:
    """``evaluation.json`` and its pictures are the ones evaluate wrote, and they describe this data."""
    from .dataset_card.evaluation import is_evaluation_file, stale
    from .folder.writer import sha256_file

    listed = {k: v for k, v in (manifest.get("files") or {}).items() if is_evaluation_file(k)}
    for name, digest in sorted(listed.items()):
        path = inside(root, name)
        if not path.is_file():
            report.add(name, "listed in the manifest but missing; run `facesynth evaluate DIR`")
        elif sha256_file(path) != digest:
            report.add(name, "changed since facesynth evaluate wrote it; run `facesynth evaluate DIR`")
            if name == "evaluation.json":
                return  # said once: what it holds is not read
    try:
        why = stale(root, manifest)
    except OutputError as exc:
        why = str(exc).split(": ", 1)[-1]
    if why:
        report.add("evaluation.json", why)


def _check_sets(root: Path, files: list[str], expected: dict, spec, report: Report) -> None:
    """Identity sets: each row names its planned identity and reference, a set's members share their attempt
    and seed (they were made as one set), and the similarity gate held."""
    import pyarrow.parquet as pq

    made: dict[str, set] = {}
    for name in files:
        table = pq.read_table(shard_file(root, name), columns=["sample_id", "identity", "reference", "attempt", "seed",
                                                    "identity_similarity"]).to_pydict()
        for sid, identity, ref, attempt, seed, similarity in zip(*table.values()):
            sample = expected.get(sid)
            if sample is not None and (identity, ref) != (sample.identity, sample.reference):
                report.add(sid, f"identity {identity} / reference {ref}, the plan has {sample.identity} / "
                                f"{sample.reference}")
            made.setdefault(identity, set()).add((attempt, seed))
            if spec.min_similarity is not None and (similarity is None or similarity < spec.min_similarity):
                report.add(sid, f"identity_similarity {similarity} is below the gate's {spec.min_similarity}")
    for identity, versions in sorted(made.items()):
        if len(versions) > 1:
            report.add(identity, f"its members were made in {len(versions)} different attempts or seeds; a set is "
                                 "made whole (run generate to finish a review round)")


def _bar(progress: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="row", desc="validating", disable=not progress, dynamic_ncols=True)


def _check_shard(root, name, record, features: Features, names, expected, seen: Counter, cells: Counter,
                 report: Report, images: bool, pool: ThreadPoolExecutor, bar, claims: dict) -> None:
    try:
        pf = pq.ParquetFile(shard_file(root, name))
    except Exception as exc:  # noqa: BLE001 - any failure to open is the finding
        report.unread.add(name)
        if name not in report.damaged:  # a shard already reported (truncated, altered) is reported once
            report.add(name, f"unreadable Parquet: {exc}", damaged=True)
        return
    got = Features.from_arrow_schema(pf.schema_arrow)
    if got != features or pf.schema_arrow.remove_metadata() != features.arrow_schema.remove_metadata():
        diff = sorted(set(got) ^ set(features)) or [k for k in features if got.get(k) != features[k]]
        report.add(name, f"schema differs from the declared features ({', '.join(diff) or 'types'})", damaged=True)
        report.unread.add(name)
        return
    if pf.metadata.num_rows != record["rows"]:
        report.add(name, f"{pf.metadata.num_rows} rows, the manifest says {record['rows']}")
    columns = ["sample_id", *names, "prompt", "width", "height", "candidate_scores", "candidate_index", *SPEEDUPS]
    columns += [c for c in ("face_box", "safety_score") if c in features]  # measured-only columns
    columns += [c for a in claims["verify"] for c in verified_columns(a)]
    columns += ["image"] if images else []
    for i in range(pf.num_row_groups):
        try:
            table = pf.read_row_group(i, columns=columns).to_pydict()
        except Exception as exc:  # noqa: BLE001
            if name not in report.damaged:
                report.add(name, f"row group {i} unreadable: {exc}", damaged=True)
            continue
        absent = [None] * len(table["sample_id"])  # a measured-only column the run did not write
        boxes, unsafe = table.get("face_box", absent), table.get("safety_score", absent)
        for r, sid in enumerate(table["sample_id"]):
            seen[sid] += 1
            bad = next((a for a in names if not isinstance(table[a][r], int) or not 0 <= table[a][r] < len(names[a])),
                       None)
            if bad is not None:
                report.add(name, f"{sid}: {bad} is {table[bad][r]!r}, not a label id (0..{len(names[bad]) - 1})")
                continue
            labels = {a: names[a][table[a][r]] for a in names}
            sample = expected.get(sid)
            if sample is None:
                report.add(name, f"{sid}: not in the plan")
                continue
            cells[(record["split"], *labels.values())] += 1
            if sample.split != record["split"]:
                report.add(name, f"{sid}: in split {record['split']}, the plan puts it in {sample.split}")
            if labels != sample.labels:
                report.add(name, f"{sid}: labels {labels} differ from the plan's {sample.labels}")
            if table["prompt"][r] != sample.prompt:
                report.add(name, f"{sid}: prompt differs from the plan's")
            _check_gates(name, sid, boxes[r], unsafe[r], claims["gates"], report)
            _check_verified(name, sid, {c: table[c][r] for a in claims["verify"] for c in verified_columns(a)},
                            {a: table[a][r] for a in claims["verify"]}, claims, names, report)
            row = {k: table[k][r] for k in (*SPEEDUPS, "candidate_scores", "candidate_index")}
            _check_choice(name, sid, {**row, **read_provenance(row)},
                          {**sample.settings, **claims["overrides"]}, claims["candidates"], report)
        if images:
            sizes = list(zip(table["width"], table["height"]))
            for sid, size, error in pool.map(_decode, table["sample_id"], table["image"], sizes):
                report.images += 1
                if error:
                    report.add(name, f"{sid}: image {error}")
        bar.update(len(table["sample_id"]))


def _check_choice(name: str, sid: str, row: dict, settings: dict, candidates: int, report: Report) -> None:
    """The row records the run's pruning and guidance settings, and as many finished candidates as they leave."""
    for key in SPEEDUPS:
        want, got = settings.get(key), row[key]
        if (want is None) != (got is None) or (want is not None and not math.isclose(got, want, rel_tol=1e-6)):
            report.add(name, f"{sid}: {key} is {got}, the run used {want}")
            return
    # a prune_at that rounds to the last step prunes nothing, as in the engine
    pruned = settings.get("keep") is not None and switch_step(settings.get("prune_at"), settings["steps"])
    finished = settings["keep"] if pruned else candidates
    scores, index = row["candidate_scores"] or [], row["candidate_index"]
    done = sum(s is not None for s in scores)
    if len(scores) != candidates or done != finished:
        report.add(name, f"{sid}: {done} of {len(scores)} candidates finished, the run finishes {finished} of "
                         f"{candidates}")
    elif not 0 <= index < len(scores) or scores[index] is None:
        report.add(name, f"{sid}: candidate_index {index} is not a candidate that finished")


def _check_gates(name: str, sid: str, face_box, safety_score, gates: dict, report: Report) -> None:
    """What the run's gates promise of every kept row: one face recorded, a safety score within the threshold."""
    if gates.get("faces") and not (face_box and len(face_box) == 4):
        report.add(name, f"{sid}: no face_box, but the run kept only rows with one face")
    limit = gates.get("safety_threshold")
    if gates.get("safety") and (safety_score is None or safety_score > limit):
        report.add(name, f"{sid}: safety_score {safety_score} is above the run's threshold {limit}")


def _check_verified(name: str, sid: str, row: dict, labels: dict[str, int], claims: dict, names: dict,
                    report: Report) -> None:
    """A verdict and a probability for every verified attribute; with the verify gate, what it promised: the
    verdict is the row's value, with at least the verifier's ``min_probability``."""
    for attr, minimum in claims["verify"].items():
        column, prob_column = verified_columns(attr)
        verdict, probability = row[column], row[prob_column]
        if verdict is None or probability is None or probability != probability:
            report.add(name, f"{sid}: {column} or {prob_column} is missing")
        elif claims["verify_gate"] and (verdict != labels[attr] or probability < minimum):
            said = names[attr][verdict] if verdict < len(names[attr]) else "other"
            report.add(name, f"{sid}: the verifier says {attr} {said} ({probability:.4f}), but the run kept only "
                             f"rows it verified as {names[attr][labels[attr]]} with at least {minimum}")


def _decode(sid: str, cell: dict, size: tuple[int, int]) -> tuple[str, tuple, str | None]:
    try:
        with Image.open(io.BytesIO(cell["bytes"])) as im:
            im.load()
            if im.size != size:
                return sid, size, f"is {im.size[0]}x{im.size[1]}, the row says {size[0]}x{size[1]}"
            if im.mode != "RGB":
                return sid, size, f"mode is {im.mode}, not RGB"
    except Exception as exc:  # noqa: BLE001
        return sid, size, f"does not decode ({exc})"
    return sid, size, None


def _check_review(root: Path, manifest, expected: dict, report: Report) -> None:
    """A row rejected in review must be gone from a finished dataset (``generate`` makes it again)."""
    try:
        waiting, rows = review_state(root, [n for n in manifest.shards if n not in report.unread], expected)
    except VerdictError as exc:
        report.add(VERDICTS, str(exc))
        return
    for sid, verdict in sorted(waiting.items()):
        why = f" ({shorten(verdict.reason)})" if verdict.reason else ""
        report.add(f"{rows[sid].shard} {sid}", f"rejected in review{why} and still in the dataset; run the same "
                                               "generate command to make it again")


def _check_card(root: Path, report: Report) -> None:
    """The card's YAML agrees with the data, and its generated part is the one the data gives now (so nothing
    was cut or injected into it, and nothing changed since it was written)."""
    from huggingface_hub import DatasetCard

    from .dataset_card.card import build_card, configs_and_infos, generated_part, summarize

    path = root / "README.md"
    if not path.exists():
        report.add("README.md", "missing; run `facesynth card DIR`")
        return
    try:
        card = DatasetCard.load(path)
        summary = summarize(root)
        configs, infos = configs_and_infos(summary)
        made = (summary.manifest.get("card") or {})
        expected = build_card(root, made.get("repo_id"), made.get("revision"), bool(made.get("gated")),
                              write_grid=None, summary=summary, name=made.get("name"))
    except Exception as exc:  # noqa: BLE001
        report.add("README.md", f"cannot be read against the data: {exc}")
        return
    data = card.data.to_dict()
    if data.get("configs") != configs:
        report.add("README.md", "YAML `configs` disagree with the data; run `facesynth card DIR`")
    if data.get("dataset_info") != infos:
        report.add("README.md", "YAML `dataset_info` (features, split sizes) disagrees with the data; "
                                "run `facesynth card DIR`")
    ours = generated_part(card.text)
    if ours is None:
        report.add("README.md", "has no facesynth markers, so its text is not the card of this data; "
                                "run `facesynth card DIR --overwrite-card`")
    elif ours != generated_part(expected.text):
        report.add("README.md", "the generated part (between the facesynth markers) differs from the data; "
                                "run `facesynth card DIR`")


def _check_reproduction(root, manifest, sample_ids, k, seed, device, dtype, report: Report) -> None:
    from .reproduce import Reproducer

    chosen = random.Random(seed).sample(sample_ids, min(k, len(sample_ids)))
    reproducer = Reproducer(root, device, dtype)
    rows = reproducer.rows(chosen)
    for sid in chosen:
        result = reproducer.reproduce(rows[sid])
        report.reproduced += 1
        if not result.identical:
            report.add(sid, f"regenerated pixels differ (max difference {result.max_diff}/255)")
        for attr in result.verifier_differs:
            verdict, probability = result.verified[attr]
            stored = result.stored_verified.get(attr)
            report.add(sid, f"verified_{attr}: the verifier now says {verdict} ({probability:.4f}); the row "
                            f"records {'nothing' if stored is None else f'{stored[0]} ({stored[1]:.4f})'}")
