"""The model zoo: the published weights by name, downloaded once into a cache, checked, usable offline.

`create_model(name, pretrained=True)` and `--checkpoint zoo:NAME` come here. Users of timm and mmaction2
expect a name, not a hunt for Dropbox links; what they must be able to trust is that the file is the
published one. What is checked depends on what the publisher states (`verification` says it per file):
- a full SHA-256 the publisher states (the Hugging Face LFS sum of a weight file): checked, every use;
- a torch.hub-style name carrying the first hex digits of the SHA-256: those digits are checked;
- nothing stated (the Dropbox `.pyth` files, X-ViT's `.pth`, Hugging Face `config.json`): the sum is
  recorded on the first download (`checksums.json` beside the file) and every later use or re-download is
  checked against it; that first download itself is trusted.
A download goes to `<file>.part` and resumes from there (HTTP Range) when a connection breaks; only a
whole, verified file is renamed into place, so the cache never holds half a file, and once a file is there
no network is needed.

A classifier's outputs mean nothing without their class order, which most checkpoints do not carry: an
entry names the packaged label map its outputs follow (`videoats/assets/labels/<map>.txt`, the copy of
`data/<dataset>/labels.txt`), or none when the order was never published (X-ViT).

The cache is `$VIDEOATS_HOME/zoo/<name>/` (default `~/.cache/videoats/zoo/<name>/`). Standard library
only (urllib), so the zoo costs no dependency.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from tqdm import tqdm

from .atomic import atomic_write_text, publish
from .errors import VideoATSError
from .paths import CACHE_ENV, cache_dir

try:  # POSIX: one downloader per cache folder at a time (torchrun ranks all ask for the same file)
    import fcntl
except ImportError:  # Windows: no lock; concurrent first downloads of one file are the user's to avoid
    fcntl = None

PREFIX = "zoo:"
HOME_ENV = CACHE_ENV
SUMS = "checksums.json"
CHUNK = 1 << 20
TIMEOUT_S = 60
# torch.hub's convention: `name-<first 8+ hex digits of the SHA-256>.ext`
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


@dataclass(frozen=True)
class ZooEntry:
    """Published weights for one registered architecture: one file, or a Hugging Face folder of files."""

    model: str
    files: Tuple[Tuple[str, str], ...]  # (file name in the cache, URL)
    what: str
    folder: bool = False  # the weights are the folder (Hugging Face layout: weights + config.json labels)
    labels: str = ""  # the packaged label map its outputs follow (LABEL_MAPS); "" when the order is unknown
    sha256: Tuple[Tuple[str, str], ...] = ()  # (file name, full SHA-256 its publisher states)


_DROPBOX = "https://www.dropbox.com/s/{}/{}?dl=1"  # dl=1: the file itself, not Dropbox's page
_HF = "https://huggingface.co/facebook/{}/resolve/main/{}"


def _hf(model: str, repo: str, what: str, weights_sha256: str = "") -> ZooEntry:
    return ZooEntry(model, tuple((f, _HF.format(repo, f)) for f in ("pytorch_model.bin", "config.json")),
                    what, folder=True, labels="kinetics600",
                    sha256=(("pytorch_model.bin", weights_sha256),) if weights_sha256 else ())


K600 = "kinetics600"
# packaged label maps: name -> file under videoats/assets/labels/ (each the copy of data/<name>/labels.txt)
LABEL_MAPS = {K600: "kinetics600.txt"}


# the official files (../shared/reference/model_facts.md, "Published weight files"); the first entry of
# a model is what `pretrained=True` loads
ZOO: Dict[str, ZooEntry] = {
    "timesformer_8x224_k600": ZooEntry(
        "timesformer_8x224", (("TimeSformer_divST_8x32_224_K600.pyth",
                               _DROPBOX.format("4h2qt41m2z3aqrb", "TimeSformer_divST_8x32_224_K600.pyth")),),
        "TimeSformer K600, official .pyth (facebookresearch/TimeSformer)", labels=K600),
    "timesformer_hr_16x448_k600": ZooEntry(
        "timesformer_hr_16x448", (("TimeSformer_divST_16x16_448_K600.pyth",
                                   _DROPBOX.format("ft1e92g2vhvxecv", "TimeSformer_divST_16x16_448_K600.pyth")),),
        "TimeSformer-HR K600, official .pyth", labels=K600),
    "timesformer_l_96x224_k600": ZooEntry(
        "timesformer_l_96x224", (("TimeSformer_divST_96x4_224_K600.pyth",
                                  _DROPBOX.format("857rx6xeclxfhdg", "TimeSformer_divST_96x4_224_K600.pyth")),),
        "TimeSformer-L K600, official .pyth", labels=K600),
    # the weights' sums: the Hugging Face LFS SHA-256 of the pytorch_model.bin now on `main` (base: the file of
    # its PR #2, merged; HR: of its PR #1, merged); config.json has no stated sum (it was edited after)
    "timesformer_8x224_k600_hf": _hf("timesformer_8x224", "timesformer-base-finetuned-k600",
                                     "TimeSformer K600, Hugging Face (with label names)",
                                     "fb24c09fa3d2f4cbf13ddd41a82397ac00ee471a6143d6541190601599d2ffdf"),
    "timesformer_hr_16x448_k600_hf": _hf("timesformer_hr_16x448", "timesformer-hr-finetuned-k600",
                                         "TimeSformer-HR K600, Hugging Face (with label names)",
                                         "199273d84d79cea619f71b3bcc8c2bdd5538e78420e7be19b8da15f46126d285"),
    "timesformer_l_96x224_k600_hf": _hf("timesformer_l_96x224", "timesformer-large-finetuned-k600",
                                        "TimeSformer-L K600, Hugging Face (with label names)"),
    "xvit_b16_16x224_k600": ZooEntry(
        "xvit_b16_16x224", (("xvit_b16_16_k600.pth",
                             "https://www.adrianbulat.com/downloads/NeurIPS2021/models/xvit_b16_16_k600.pth"),),
        "X-ViT K600, official .pth (1adrianb/video-transformers; its class order is published nowhere)"),
    "deit_small_patch16_224_in1k": ZooEntry(
        "deit_small_patch16_224", (("deit_small_patch16_224-cd65a155.pth",
                                    "https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth"),),
        "DeiT-S ImageNet-1k (timm; also the ImageNet init of video models)"),
    # CvT: the official .pth files sit in a OneDrive share (microsoft/CvT README, "model zoo"), which gives no
    # direct file link; the Hugging Face conversions of the same weights do
    **{f"{model}_{tag}_hf": ZooEntry(
        model, tuple((f, f"https://huggingface.co/microsoft/{repo}/resolve/main/{f}")
                     for f in ("pytorch_model.bin", "config.json")),
        f"{title}, Hugging Face conversion of the official weights (microsoft/{repo}, with label names)",
        folder=True)
       for model, tag, repo, title in (
           ("cvt_21_384", "in1k", "cvt-21-384", "CvT-21 384 px ImageNet-1k"),
           ("cvt_21_384", "in22k", "cvt-21-384-22k", "CvT-21 384 px, ImageNet-22k pretrained, 1k fine-tuned"),
           ("cvt_13_224", "in1k", "cvt-13", "CvT-13 224 px ImageNet-1k"),
           ("cvt_21_224", "in1k", "cvt-21", "CvT-21 224 px ImageNet-1k"))},
    # PS-ViT: the official files are on Google Drive (yuexy/PS-ViT README); `uc?export=download` gives the file
    # itself (no confirmation page below 100 MB), a raw or `state_dict` dict that timm's load_checkpoint reads
    **{f"{model}_in1k": ZooEntry(
        model, ((f"{theirs}.pth", f"https://drive.google.com/uc?export=download&id={drive}"),),
        f"{title} ImageNet-1k, official (yuexy/PS-ViT, Google Drive)")
       for model, theirs, drive, title in (
           ("psvit_b18_224", "ps_vit_b_18", "1KG4TdrfbNNdbNImCPCdSeQ5Y-gkDMlnr", "PS-ViT-B/18"),
           ("psvit_b14_224", "ps_vit_b_14", "1FAAOCbpgPKlSe3dWIzQLg8JK6okvZkC5", "PS-ViT-B/14"))},
}


def home() -> str:
    """The cache root: `$VIDEOATS_HOME/zoo`, default `~/.cache/videoats/zoo`."""
    return cache_dir("zoo")


def entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise VideoATSError(f"unknown zoo weights {name!r} (known: {', '.join(ZOO)}); `videoats models` lists "
                            "them with their models")
    return ZOO[name]


def names_for(model: str) -> List[str]:
    """Zoo names whose weights are made for `model`, the default (what `pretrained=True` loads) first."""
    return [n for n, e in ZOO.items() if e.model == model]


def default_for(model: str) -> str:
    found = names_for(model)
    if not found:
        have = ", ".join(sorted({e.model for e in ZOO.values()}))
        raise VideoATSError(f"no zoo weights for model {model!r} (the zoo has weights for {have}); load your own "
                            "file with load_checkpoint / --checkpoint PATH")
    return found[0]


def folder(name: str) -> str:
    return os.path.join(home(), name)


def local_path(name: str) -> str:
    """Where the weights of `name` are (or will be) in the cache: the file, or the folder for HF entries."""
    e = entry(name)
    return folder(name) if e.folder else os.path.join(folder(name), e.files[0][0])


def is_cached(name: str) -> bool:
    return all(os.path.isfile(os.path.join(folder(name), f)) for f, _ in entry(name).files)


def label_names(name: str) -> Optional[List[str]]:
    """The class names of zoo entry `name` in output order, or None when its order was never published."""
    key = entry(name).labels
    if not key:
        return None
    with open(os.path.join(os.path.dirname(__file__), "assets", "labels", LABEL_MAPS[key]), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def entry_for(path: str) -> Optional[str]:
    """The zoo name of a checkpoint path: `zoo:NAME`, a file or folder in the zoo cache, or a file under its
    published name (e.g. `TimeSformer_divST_8x32_224_K600.pyth` downloaded by hand); None otherwise."""
    if path.startswith(PREFIX):
        return path[len(PREFIX):] if path[len(PREFIX):] in ZOO else None
    real = os.path.realpath(os.path.expanduser(path))
    for name in ZOO:
        if real == os.path.realpath(local_path(name)):
            return name
    base = os.path.basename(real)
    return next((n for n, e in ZOO.items() if not e.folder and e.files[0][0] == base), None)


def verification(name: str) -> Dict[str, str]:
    """What is checked for each file of zoo entry `name`: its publisher's SHA-256, the hash prefix in its
    name, or (nothing stated) the sum recorded on its first download."""
    e = entry(name)
    stated = dict(e.sha256)
    out = {}
    for file_name, _ in e.files:
        match = HASH_IN_NAME.search(file_name)
        out[file_name] = ("the SHA-256 its publisher states" if file_name in stated else
                          f"the SHA-256 prefix in its name ({match.group(1)})" if match else
                          "none stated: the SHA-256 recorded on the first download")
    return out


def resolve(path: str, progress: bool = True) -> str:
    """`zoo:NAME` -> the local weights (downloaded first if needed); any other path unchanged."""
    return fetch(path[len(PREFIX):], progress) if path.startswith(PREFIX) else path


def fetch(name: str, progress: bool = True) -> str:
    """The local weights of zoo entry `name`, downloading what the cache lacks; every file checked."""
    e = entry(name)
    where = folder(name)
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as err:
        raise VideoATSError(f"cannot create the zoo cache folder {where}: {err.strerror}; set {HOME_ENV} to a "
                            "writable folder")
    lacking = [(os.path.join(where, f), url) for f, url in e.files if not os.path.isfile(os.path.join(where, f))]
    try:
        with _locked(where):
            for file_name, url in e.files:
                path = os.path.join(where, file_name)
                stated = dict(e.sha256).get(file_name)
                if not os.path.isfile(path):
                    try:
                        _download(name, url, path + ".part", progress)
                    except VideoATSError as err:
                        raise _offline_hint(err, path, lacking) from None
                    _check(name, path + ".part", path, url, fresh=True, stated=stated)
                    publish(path + ".part", path)
                else:
                    _check(name, path, path, url, fresh=False, stated=stated)
    except OSError as err:  # network errors are turned into VideoATSError where they happen: this is the disk
        raise VideoATSError(f"zoo weights {name}: cannot write to the cache folder {where} "
                            f"({err.strerror or err}); free some space or set {HOME_ENV} to another folder")
    return local_path(name)


@contextmanager
def _locked(where: str) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    fd = os.open(where, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ------------------------------------------------------------------------------------------- checking

def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sums(where: str) -> Dict[str, dict]:
    try:
        with open(os.path.join(where, SUMS), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _check(name: str, path: str, final: str, url: str, fresh: bool, stated: Optional[str] = None) -> None:
    """Compare the file at `path` (a finished download, or the cached `final`) with the sum its publisher
    states, else the name's hash prefix, else the sum recorded before; record the sum when none is known.
    A fresh download that fails is removed."""
    where, file_name = os.path.dirname(final), os.path.basename(final)
    digest = sha256(path)
    sums = _sums(where)
    match = HASH_IN_NAME.search(file_name)
    if stated:
        expected, source = stated, "the SHA-256 its publisher states"
    elif match:
        expected, source = match.group(1), "the hash prefix in its name"
    else:
        expected, source = (sums.get(file_name, {}).get("sha256"),
                            f"the sum recorded on its first download ({os.path.join(where, SUMS)})")
    if expected and not digest.startswith(expected):
        if fresh:
            os.remove(path)
            accept = (f"the server's file is not the one its publisher states; to use it anyway, download it "
                      f"yourself and give its path as the checkpoint" if stated else
                      f"the server's file changed: delete {where} to accept it")
            raise VideoATSError(f"zoo weights {name}: the file downloaded from {url} has SHA-256 {digest[:16]}..., "
                                f"not {expected[:16]}... ({source}); nothing was kept. Run again; if it persists "
                                + accept)
        raise VideoATSError(f"zoo weights {name}: cached file {final} has SHA-256 {digest[:16]}..., not "
                            f"{expected[:16]}... ({source}): it is damaged or was replaced; delete it to download "
                            "it again")
    if file_name not in sums:
        sums[file_name] = {"sha256": digest, "size": os.path.getsize(path), "url": url}
        atomic_write_text(os.path.join(where, SUMS), json.dumps(sums, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------ downloading

def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _fail(name: str, url: str, part: str, reason: str) -> VideoATSError:
    have = os.path.getsize(part) if os.path.exists(part) else 0
    if have:
        return VideoATSError(f"download of zoo weights {name} from {url} broke off after {_mb(have)} ({reason}); "
                             f"run again to resume it (kept in {part})")
    return VideoATSError(f"cannot download zoo weights {name} from {url} ({reason}); check the connection, or "
                         f"put the file at {part[:-len('.part')]} to use it offline")


def _offline_hint(err: VideoATSError, path: str, lacking) -> VideoATSError:
    """A download that got nothing, for an entry of several files the cache lacks: name every one of them,
    so that an offline user fetches them all at once rather than one error at a time."""
    if len(lacking) < 2 or os.path.exists(path + ".part"):
        return err
    wanted = "; ".join(f"{where} from {url}" for where, url in lacking)
    return VideoATSError(f"{str(err).split('; check the connection')[0]}; check the connection, or to use it "
                         f"offline put all {len(lacking)} files it lacks in place: {wanted}")


def _open(url: str, have: int):
    headers = {"User-Agent": "videoats-zoo (python urllib)"}
    if have:
        headers["Range"] = f"bytes={have}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)


def _download(name: str, url: str, part: str, progress: bool) -> None:
    """Append the rest of `url` to `part` (all of it when there is no part); raise when it breaks off."""
    have = os.path.getsize(part) if os.path.exists(part) else 0
    try:
        resp = _open(url, have)
    except urllib.error.HTTPError as e:
        whole = re.fullmatch(r"bytes \*/(\d+)", e.headers.get("Content-Range", "") if e.headers else "")
        if e.code == 416 and whole and int(whole.group(1)) == have:
            return  # the part is already the whole file (the last run stopped before checking it)
        if e.code == 416:
            os.remove(part)  # longer than the file: not a prefix of it, start again
            return _download(name, url, part, progress)
        raise _fail(name, url, part, f"HTTP {e.code} {e.reason}")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _fail(name, url, part, str(getattr(e, "reason", e)))
    with resp:
        if have and resp.status != 206:
            have = 0  # the server ignores ranges: it sends the whole file again
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        broke = None
        with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                desc=os.path.basename(part[:-len(".part")])) as bar:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (http.client.HTTPException, OSError) as e:
                    broke = type(e).__name__
                    break
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if broke or (total is not None and os.path.getsize(part) < total):
        raise _fail(name, url, part, (broke or "connection closed") + (f"; the file is {_mb(total)}" if total else ""))
