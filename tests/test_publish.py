"""facesynth push against an autospec'd HfApi: the exact Hub calls for every case, and every error."""

import json
import shutil
from unittest.mock import call, create_autospec

import httpx2
import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.hf_api import CommitInfo, GitRefInfo, GitRefs, RepoFile

from facesynth.cli import main
from facesynth.generation import GenerateConfig, generate
from facesynth.publish import STALE_PATTERNS, UPLOAD_PATTERNS

REPO = "me/faces-demo"
TOKEN = "hf_live_secret_0123456789"
DEMO = dict(recipe="emotions", model="tiny", quiet=True, rows_per_shard=8, batch_size=12)


def http_error(status, cls=HfHubHTTPError, method="POST"):
    request = httpx2.Request(method, f"https://huggingface.co/api/datasets/{REPO}")
    return cls(f"{status} error", response=httpx2.Response(status, request=request))


def commit(oid="c0ffee1234567890", pr=None):
    return CommitInfo(commit_url=f"https://huggingface.co/datasets/{REPO}/commit/{oid}", commit_message="m",
                      commit_description="", oid=oid, pr_url=pr)


def remote_tree(root, extra=()):
    """What the Hub lists after ``root`` was pushed: LFS entries carry the sha256."""
    manifest = json.loads((root / "manifest.json").read_text())
    files = [RepoFile(path=n, size=r["bytes"], oid="x", lfs={"size": r["bytes"], "oid": r["sha256"], "pointerSize": 1})
             for n, r in manifest["shards"].items()]
    files += [RepoFile(path=p, size=10, oid="y") for p in ("README.md", "manifest.json")]
    return files + list(extra)


@pytest.fixture
def api():
    api = create_autospec(HfApi, instance=True)
    api.list_repo_tree.side_effect = http_error(404, RepositoryNotFoundError, "GET")
    api.list_repo_refs.return_value = GitRefs(branches=[], converts=[], tags=[])
    api.upload_folder.return_value = commit()
    return api


@pytest.fixture
def hub(api, monkeypatch):
    """The CLI builds ``HfApi(token=...)``: hand it the autospec'd one and remember the token."""
    seen = []

    def make(token=None):
        seen.append(token)
        return api

    monkeypatch.setattr("facesynth.publish.make_api", make)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return seen


@pytest.fixture
def folder(demo_dataset, tmp_path):
    out = tmp_path / "demo"
    shutil.copytree(demo_dataset, out)
    return out


def push(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(args=["push", *args], prog_name="facesynth")
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def upload_call(folder, revision=None, create_pr=False, message="facesynth emotions 1.0.0: 24 rows"):
    return call.upload_folder(repo_id=REPO, folder_path=str(folder), repo_type="dataset", revision=revision,
                              commit_message=message, allow_patterns=UPLOAD_PATTERNS,
                              delete_patterns=STALE_PATTERNS, create_pr=create_pr)


def test_first_push(folder, api, hub, capsys):
    code, out, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 0, err
    assert api.method_calls == [
        call.create_repo(REPO, repo_type="dataset", private=False, exist_ok=True),
        call.list_repo_tree(REPO, repo_type="dataset", revision=None, recursive=True),
        upload_call(folder),
    ]
    assert hub == [TOKEN]  # from HF_TOKEN
    assert f"https://huggingface.co/datasets/{REPO}\n" in out
    assert f'load_dataset("{REPO}", revision="c0ffee1234567890")' in out
    assert TOKEN not in out + err


def test_repush_of_a_grown_version_deletes_stale_shards_and_tags(tmp_path, api, hub, capsys):
    folder = tmp_path / "grow"
    generate(GenerateConfig(out=folder, num_samples=16, **DEMO))
    old = remote_tree(folder)
    generate(GenerateConfig(out=folder, num_samples=24, **DEMO))  # version 1.1.0, reuses full shards
    stale = RepoFile(path="data/train-00007.parquet", size=4096, oid="z", lfs={"size": 4096, "oid": "0" * 64,
                                                                              "pointerSize": 1})
    api.list_repo_tree.side_effect = None
    api.list_repo_tree.return_value = old + [stale]

    code, out, err = push([str(folder), "--repo-id", REPO, "--dry-run"], capsys)
    assert code == 0, err
    before = {e.path: e.lfs.sha256 for e in old if e.lfs}
    after = {n: r["sha256"] for n, r in json.loads((folder / "manifest.json").read_text())["shards"].items()}
    kept = [n for n in after if before.get(n) == after[n]]
    changed = [n for n in after if n in before and before[n] != after[n]]
    new = [n for n in after if n not in before]
    assert kept and new  # full shards of 1.0.0 are kept, the grown rows are new
    for name in kept:
        assert f"keep    {name}" in out
    for name in changed:
        assert f"upload  {name}" in out and f"{name}  " in out
    for name in new:
        assert f"upload  {name}" in out
    assert "delete  data/train-00007.parquet  4.1 kB (stale)" in out
    uploads = len(changed) + len(new) + 3  # the shards, card, manifest and grid
    assert out.splitlines()[-1].startswith(f"dry run: would upload {uploads} files (")
    assert api.method_calls == [call.list_repo_tree(REPO, repo_type="dataset", revision=None, recursive=True)]

    api.reset_mock()
    code, out, err = push([str(folder), "--repo-id", REPO, "--tag", "v1.1.0"], capsys)
    assert code == 0, err
    assert api.method_calls == [
        call.list_repo_refs(REPO, repo_type="dataset"),
        call.create_repo(REPO, repo_type="dataset", private=False, exist_ok=True),
        call.list_repo_tree(REPO, repo_type="dataset", revision=None, recursive=True),
        upload_call(folder, message="facesynth emotions 1.1.0: 24 rows"),
        call.create_tag(REPO, tag="v1.1.0", tag_message="version 1.1.0", revision="c0ffee1234567890",
                        repo_type="dataset"),
    ]
    assert "tagged c0ffee1234 as v1.1.0" in out
    assert f'load_dataset("{REPO}", revision="v1.1.0")' in out


def test_branch_private_and_message(folder, api, hub, capsys):
    code, _, err = push([str(folder), "--repo-id", REPO, "--branch", "dev", "--private", "-m", "try"], capsys)
    assert code == 0, err
    assert api.method_calls == [
        call.create_repo(REPO, repo_type="dataset", private=True, exist_ok=True),
        call.create_branch(REPO, repo_type="dataset", branch="dev", exist_ok=True),
        call.list_repo_tree(REPO, repo_type="dataset", revision="dev", recursive=True),
        upload_call(folder, revision="dev", message="try"),
    ]


def test_pull_request(folder, api, hub, capsys):
    api.upload_folder.return_value = commit(pr=f"https://huggingface.co/datasets/{REPO}/discussions/3")
    code, out, err = push([str(folder), "--repo-id", REPO, "--create-pr"], capsys)
    assert code == 0, err
    assert api.method_calls[-1] == upload_call(folder, create_pr=True)
    assert f"https://huggingface.co/datasets/{REPO}/discussions/3" in out


def test_token_option_wins_and_is_never_printed_or_written(folder, api, hub, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    api.create_repo.side_effect = http_error(401)
    code, out, err = push([str(folder), "--repo-id", REPO, "--token", TOKEN], capsys)
    assert hub == [TOKEN] and code == 1
    assert err == ("Error: creating the repo: not logged in, or the token is invalid: give --token, set HF_TOKEN, "
                   "or run `hf auth login`\n")
    assert TOKEN not in out + err
    assert not any(TOKEN.encode() in p.read_bytes() for p in folder.rglob("*") if p.is_file())


ERRORS = [
    ("create_repo", http_error(403),
     f"creating the repo: no write access to '{REPO}': use a token with write permission for that namespace"),
    ("upload_folder", http_error(429),
     "uploading: rate limited by the Hub: wait a few minutes, then run the same command again to finish "
     "(files already uploaded are not sent twice)"),
    ("upload_folder", http_error(503),
     "uploading: the Hub answered 503: run the same command again to finish (files already uploaded are not sent "
     "twice)"),
    ("list_repo_tree", httpx2.ConnectError("dns failure"),
     "listing the repo: cannot reach the Hub (ConnectError); check the network, then run the same command again "
     "to finish (files already uploaded are not sent twice)"),
]


@pytest.mark.parametrize("method,error,message", ERRORS, ids=[m for m, _, _ in ERRORS])
def test_hub_errors_are_one_line_and_a_rerun_completes(method, error, message, folder, api, hub, capsys):
    getattr(api, method).side_effect = error
    code, out, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 1 and err == f"Error: {message}\n"
    getattr(api, method).side_effect = None if method != "list_repo_tree" else \
        http_error(404, RepositoryNotFoundError, "GET")
    code, out, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 0, err
    assert api.method_calls[-1] == upload_call(folder)


def test_not_logged_in(folder, api, monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-login"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    code, _, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 1 and err == "Error: not logged in: give --token, set HF_TOKEN, or run `hf auth login`\n"


BAD = [
    (["--repo-id", "not a repo"], "--repo-id: 'not a repo' is not a dataset repo id of the form ORG/NAME"),
    (["--repo-id", "justaname"], "--repo-id: 'justaname' is not a dataset repo id of the form ORG/NAME"),
    (["--repo-id", REPO, "--tag", "v1", "--create-pr"],
     "--tag: not with --create-pr; tag the commit once the pull request is merged"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[m[:20] for _, m in BAD])
def test_bad_arguments_exit_2_before_any_hub_call(args, message, folder, api, hub, capsys):
    code, _, err = push([str(folder), *args], capsys)
    assert code == 2 and err == f"Error: {message}\n"
    assert api.method_calls == []


def test_an_existing_tag_is_refused_before_uploading(folder, api, hub, capsys):
    api.list_repo_refs.return_value = GitRefs(branches=[], converts=[], tags=[GitRefInfo("v1", "refs/tags/v1", "a")])
    code, _, err = push([str(folder), "--repo-id", REPO, "--tag", "v1"], capsys)
    assert code == 2 and err == f"Error: --tag: 'v1' already exists in '{REPO}'; tags are releases, choose a new one\n"
    assert api.method_calls == [call.list_repo_refs(REPO, repo_type="dataset")]


def test_an_invalid_folder_is_refused(folder, api, hub, capsys):
    (folder / "data" / "happy" / "train-00000.parquet").write_bytes(b"garbage")
    code, _, err = push([str(folder), "--repo-id", REPO], capsys)
    assert code == 2
    assert err.startswith(f"Error: '{folder}' is not ready to publish: ")
    assert err.endswith(f"run `facesynth validate {folder}`\n")
    assert api.method_calls == []
