"""The model zoo against a local HTTP server on 127.0.0.1 (never the real hosts): download once, resume a
broken download, refuse a wrong sum leaving nothing in the cache, work offline, and load through
`create_model(pretrained=...)` and `zoo:NAME` wherever a checkpoint path is read."""
import contextlib
import hashlib
import io
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import videoats
from videoats import VideoATSError, zoo
from videoats.checkpoint import inspect_checkpoint, save_checkpoint, to_hf_timesformer
from videoats.cli import main
from videoats.data.synthetic import make_synthetic
from videoats.inference.predictor import load_predictor
from videoats.train.loop import _init_weights

TS = "timesformer_tiny_8x32"
SMALL = bytes(range(256)) * 40  # 10 240 bytes, 3 chunks of the test's CHUNK
LABELS = [f"class {i}" for i in range(10)]


class Files(BaseHTTPRequestHandler):
    """Serves `server.files` {path: bytes} with HTTP Range; a path in `server.break_once` sends half its
    bytes (announcing all of them) and closes, the first time it is asked for from byte 0."""

    def do_GET(self):  # noqa: N802 (the http.server API)
        srv = self.server
        srv.log.append((self.path, self.headers.get("Range")))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if start == 0 and self.path in srv.break_once:
            srv.break_once.discard(self.path)
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    srv.files, srv.break_once, srv.log = {}, set(), []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty cache and a zoo table of our own (filled by `entry` below)."""
    monkeypatch.setenv(zoo.HOME_ENV, str(tmp_path / "home"))
    monkeypatch.setattr(zoo, "ZOO", {})
    monkeypatch.setattr(zoo, "CHUNK", 4096)  # several reads per file, so a break falls between them
    return tmp_path / "home" / "zoo"


def serve(srv, name, file_name, body, model=TS, folder=False, extra=()):
    """Put `body` on the server and a zoo entry `name` pointing at it."""
    files = [(file_name, body)] + list(extra)
    for f, b in files:
        srv.files[f"/{name}/{f}"] = b
    zoo.ZOO[name] = zoo.ZooEntry(model, tuple((f, f"{srv.url}/{name}/{f}") for f, _ in files), "test", folder)


def cache_files(home, name):
    where = home / name
    return sorted(os.listdir(where)) if where.exists() else []


def test_download_once_records_the_sum_and_then_works_offline(server, home, capsys):
    serve(server, "small", "small.bin", SMALL)
    path = zoo.fetch("small")
    assert path == str(home / "small" / "small.bin") and open(path, "rb").read() == SMALL
    sums = json.load(open(home / "small" / zoo.SUMS))
    assert sums["small.bin"]["sha256"] == hashlib.sha256(SMALL).hexdigest() and sums["small.bin"]["size"] == 10240
    assert cache_files(home, "small") == [zoo.SUMS, "small.bin"]  # no .part, no temp file left
    assert "small.bin" in capsys.readouterr().err  # the tqdm bar is on stderr
    assert zoo.fetch("small") == path and len(server.log) == 1  # from the cache: no second request
    server.shutdown()
    server.server_close()
    assert zoo.is_cached("small") and open(zoo.fetch("small"), "rb").read() == SMALL  # offline


def test_download_not_there_and_offline_without_cache_are_one_line_errors(server, home):
    serve(server, "gone", "gone.bin", SMALL)
    del server.files["/gone/gone.bin"]
    with pytest.raises(VideoATSError, match=r"cannot download zoo weights gone from http://127\.0\.0\.1:\d+/gone/"
                                            r"gone\.bin \(HTTP 404 .*\); check the connection, or put the file at "):
        zoo.fetch("gone")
    assert cache_files(home, "gone") == []
    server.shutdown()
    server.server_close()
    with pytest.raises(VideoATSError, match="cannot download zoo weights gone") as err:
        zoo.fetch("gone")
    assert "\n" not in str(err.value)


def test_offline_an_entry_of_several_files_names_every_file_it_lacks(server, home):
    """A Hugging Face entry (weights and config.json) offline: one error naming both files and where each
    goes, not one file per attempt."""
    serve(server, "hf", "config.json", b"{}", folder=True, extra=[("pytorch_model.bin", SMALL)])
    server.shutdown()
    server.server_close()
    with pytest.raises(VideoATSError) as err:
        zoo.fetch("hf", progress=False)
    text = str(err.value)
    assert "\n" not in text and "all 2 files it lacks" in text
    for f in ("config.json", "pytorch_model.bin"):
        assert f"{home / 'hf' / f} from {server.url}/hf/{f}" in text


def test_a_broken_download_resumes_from_the_part_file(server, home):
    serve(server, "broken", "broken.bin", SMALL)
    server.break_once.add("/broken/broken.bin")
    with pytest.raises(VideoATSError, match=r"broke off after 0\.0 MB .*run again to resume it \(kept in .*"
                                            r"broken\.bin\.part\)"):
        zoo.fetch("broken", progress=False)
    part = home / "broken" / "broken.bin.part"
    assert part.read_bytes() == SMALL[:5120] and not zoo.is_cached("broken")
    path = zoo.fetch("broken", progress=False)
    assert open(path, "rb").read() == SMALL and not part.exists()
    assert server.log[-1] == ("/broken/broken.bin", "bytes=5120-")  # only the rest was asked for
    assert json.load(open(home / "broken" / zoo.SUMS))["broken.bin"]["sha256"] == hashlib.sha256(SMALL).hexdigest()


def test_a_whole_part_left_by_a_killed_run_is_checked_and_kept(server, home):
    serve(server, "whole", "whole.bin", SMALL)
    (home / "whole").mkdir(parents=True)
    (home / "whole" / "whole.bin.part").write_bytes(SMALL)  # downloaded, killed before the rename
    assert open(zoo.fetch("whole", progress=False), "rb").read() == SMALL
    assert server.log == [("/whole/whole.bin", "bytes=10240-")]  # answered 416 */10240: nothing to fetch


def test_hash_prefix_in_the_name_is_checked(server, home):
    good = hashlib.sha256(SMALL).hexdigest()[:8]
    serve(server, "hub", f"weights-{good}.pth", SMALL)
    assert open(zoo.fetch("hub", progress=False), "rb").read() == SMALL
    serve(server, "bad", "weights-deadbeef.pth", SMALL)
    with pytest.raises(VideoATSError, match=r"zoo weights bad: the file downloaded from .* has SHA-256 "
                                            rf"{good}.*not deadbeef\.\.\. \(the hash prefix in its name\); nothing"):
        zoo.fetch("bad", progress=False)
    assert cache_files(home, "bad") == []  # refused: no file, no part, no recorded sum


def test_a_changed_file_is_refused_against_the_recorded_sum(server, home):
    serve(server, "rec", "rec.bin", SMALL)
    path = zoo.fetch("rec", progress=False)
    os.remove(path)  # e.g. the user cleans the weights; the recorded sum stays
    server.files["/rec/rec.bin"] = SMALL[::-1]  # the server now has other bytes
    with pytest.raises(VideoATSError, match=r"not .*\(the sum recorded on its first download .*checksums\.json\)\)"
                                            r"; nothing was kept\. Run again; if it persists the server's file "
                                            r"changed: delete .*rec to accept it"):
        zoo.fetch("rec", progress=False)
    assert cache_files(home, "rec") == [zoo.SUMS]
    # a damaged cached file is named, not used
    with open(home / "rec" / "rec.bin", "wb") as f:
        f.write(SMALL[:-1] + b"x")
    with pytest.raises(VideoATSError, match=r"cached file .*rec\.bin has SHA-256 .* it is damaged or was replaced; "
                                            r"delete it to download it again"):
        zoo.fetch("rec", progress=False)


def test_unknown_names_and_models_without_weights(home):
    with pytest.raises(VideoATSError, match=r"unknown zoo weights 'nope' \(known: \); `videoats models` lists"):
        zoo.fetch("nope")
    with pytest.raises(VideoATSError, match=r"no zoo weights for model 'timesformer_tiny_8x32'"):
        videoats.create_model(TS, pretrained=True)
    assert cli_error(["convert", "zoo:nope", "out.safetensors", "--model", TS]).startswith(
        "videoats convert: error: unknown zoo weights 'nope'")


def cli_error(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 2
    return err.getvalue()


def _tiny_weights(tmp_path):
    torch.manual_seed(3)
    model = videoats.create_model(TS).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    path = tmp_path / "tiny.pt"
    save_checkpoint(str(path), model, label_names=LABELS)
    return model, path.read_bytes()


def test_pretrained_and_zoo_names_load_the_published_weights(server, home, tmp_path):
    src, body = _tiny_weights(tmp_path)
    serve(server, "tiny_k10", "tiny.pt", body)
    model = videoats.create_model(TS, pretrained=True)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    # another class count: a new head, the rest loaded
    five = videoats.create_model(TS, num_classes=5, pretrained="tiny_k10")
    assert five.head.weight.shape == (5, src.head.weight.shape[1])
    assert torch.equal(five.state_dict()["blocks.0.attn.qkv.weight"], src.state_dict()["blocks.0.attn.qkv.weight"])
    # `zoo:NAME` through the one path resolver: a command that reads a checkpoint gets it
    out = tmp_path / "converted.safetensors"
    assert main(["convert", "zoo:tiny_k10", str(out), "--model", TS]) == 0
    assert inspect_checkpoint(str(out))["metadata"]["label_names"] == LABELS
    assert len(server.log) == 1  # downloaded once for all of the above


def test_hugging_face_folder_entry_brings_its_label_names(server, home, tmp_path):
    src, _ = _tiny_weights(tmp_path)
    buf = tmp_path / "pytorch_model.bin"
    torch.save(to_hf_timesformer(src.state_dict()), buf)
    config = json.dumps({"model_type": "timesformer", "id2label": {str(i): n for i, n in enumerate(LABELS)}})
    serve(server, "tiny_hf", "pytorch_model.bin", buf.read_bytes(), folder=True,
          extra=[("config.json", config.encode())])
    assert zoo.local_path("tiny_hf") == str(home / "tiny_hf")
    info = inspect_checkpoint("zoo:tiny_hf")
    assert info["source_format"] == "hf_timesformer" and info["metadata"]["label_names"] == LABELS
    model = videoats.create_model(TS, pretrained="tiny_hf")
    assert torch.equal(model.head.weight, src.head.weight)
    assert sorted(json.load(open(home / "tiny_hf" / zoo.SUMS))) == ["config.json", "pytorch_model.bin"]


def test_models_command_shows_zoo_weights_and_cache_state(server, home, tmp_path, capsys):
    _, body = _tiny_weights(tmp_path)
    serve(server, "tiny_k10", "tiny.pt", body)
    assert main(["models", "timesformer_tiny*", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["models"][0]["zoo"] == [{"name": "tiny_k10", "cached": False}]
    assert res["zoo"][0]["name"] == "tiny_k10" and res["cache"] == str(home)
    zoo.fetch("tiny_k10", progress=False)
    assert main(["models", "timesformer_tiny*"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"timesformer_tiny_8x32 .* 1 \(1 cached\)", text)
    assert re.search(r"tiny_k10\s+timesformer_tiny_8x32\s+yes\s+test", text)


def test_the_real_table_names_registered_models_and_hash_prefixes():
    """The shipped table: every entry is for a registered model, single files are where a path points, and
    the DeiT file's torch.hub prefix is what the checker will compare."""
    names = set(videoats.list_models())
    assert {e.model for e in zoo.ZOO.values()} <= names
    assert zoo.default_for("timesformer_8x224") == "timesformer_8x224_k600"
    assert zoo.HASH_IN_NAME.search("deit_small_patch16_224-cd65a155.pth").group(1) == "cd65a155"
    assert zoo.HASH_IN_NAME.search("TimeSformer_divST_8x32_224_K600.pyth") is None
    assert all(url.startswith("https://") for e in zoo.ZOO.values() for _, url in e.files)
    assert all(url.endswith("?dl=1") for e in zoo.ZOO.values() for _, url in e.files if "dropbox" in url)


def test_zoo_names_reach_eval_infer_and_training_init(server, home, tmp_path, capsys):
    """The engine's own early checks (eval, infer/visualize, train's TRAIN.CHECKPOINT_FILE) resolve the name
    too, so the weights arrive before any work starts."""
    torch.manual_seed(4)
    five = videoats.create_model(TS, num_classes=5)
    save_checkpoint(str(tmp_path / "five.pt"), five)
    serve(server, "tiny5", "five.pt", (tmp_path / "five.pt").read_bytes())
    data = tmp_path / "syn"
    make_synthetic(str(data), num_classes=5, videos_per_class={"test": 1}, num_frames=16, size=32, seed=2)
    config = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", "synthetic", "tiny_timesformer.yaml")
    assert main(["eval", "--config", config, "--checkpoint", "zoo:tiny5", "--output", str(tmp_path / "ev"),
                 "DATA.PATH_TO_DATA_DIR", str(data), "MODEL.NUM_CLASSES", "5", "DATA.NUM_WORKERS", "0",
                 "DEVICE", "cpu", "--no-progress", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checkpoint"] == zoo.local_path("tiny5") and res["coverage"]["evaluated_videos"] == 5
    predictor = load_predictor(checkpoint="zoo:tiny5")  # what infer and visualize build
    assert predictor.checkpoint == zoo.local_path("tiny5") and predictor.model.num_classes == 5
    net = videoats.create_model(TS, num_classes=5)
    assert "mapped" in _init_weights(net, "zoo:tiny5", [str(i) for i in range(5)], print)
    assert torch.equal(net.head.weight, five.head.weight)
    assert len(server.log) == 1


def test_an_unusable_cache_folder_is_one_line(server, home, tmp_path, monkeypatch):
    serve(server, "small", "small.bin", SMALL)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(zoo.HOME_ENV, str(blocker))
    with pytest.raises(VideoATSError, match=r"cannot create the zoo cache folder .*a_file/zoo/small: .*; set "
                                            r"VIDEOATS_HOME to a writable folder"):
        zoo.fetch("small")
    monkeypatch.setenv(zoo.HOME_ENV, str(tmp_path / "ok"))
    monkeypatch.setattr(zoo, "publish", lambda tmp, path: (_ for _ in ()).throw(OSError(28, "No space left")))
    with pytest.raises(VideoATSError, match=r"zoo weights small: cannot write to the cache folder .* \(No space "
                                            r"left\); free some space or set VIDEOATS_HOME to another folder"):
        zoo.fetch("small", progress=False)


def test_processes_asking_at_once_download_once(server, home):
    """torchrun ranks all resolve the same name: the folder lock lets one download and the others read it."""
    serve(server, "shared", "shared.bin", SMALL * 50)
    got, errors = [], []

    def one():
        try:
            got.append(zoo.fetch("shared", progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(got)) == 1 and open(got[0], "rb").read() == SMALL * 50
    assert len(server.log) == 1
