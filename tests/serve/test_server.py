"""``unetseg serve`` against a real uvicorn server on a loopback port (tiny models made here)."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile
from PIL import Image

from inference.helpers import make_checkpoint, tiny_config, tiny_model
from serve.helpers import TOKEN, rle_decode, running, wait_for
from unetseg.checkpoint import save_checkpoint
from unetseg.inference.segmenter import load
from unetseg.io.images import read_image, read_mask, write_image
from unetseg.serve.app import create_app
from unetseg.serve.settings import Limits

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def semantic(tmp_path_factory: pytest.TempPathFactory):
    """A 2D two-class model (mask values 0/255) behind a token, uploads up to 256 KiB."""
    ckpt = make_checkpoint(tmp_path_factory.mktemp("serve-semantic") / "ckpt")
    seg = load(ckpt, device="cpu")
    app = create_app(load(ckpt, device="cpu"), limits=Limits(max_upload_bytes=256 * 1024), token=TOKEN)
    with running(app) as url, httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
        yield seg, client, url


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory):
    cfg = tiny_config(num_classes=3)
    cfg.data.task = "instances"
    ckpt = save_checkpoint(tmp_path_factory.mktemp("serve-instances") / "ckpt", tiny_model(cfg), cfg)
    app = create_app(load(ckpt, device="cpu"))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield load(ckpt, device="cpu"), client


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff(array: np.ndarray, **kw) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kw)
    return buffer.getvalue()


def _expected(seg, data: bytes, tmp_path: Path, name: str) -> np.ndarray:
    (tmp_path / name).write_bytes(data)
    return seg.predict(read_image(tmp_path / name)[0])


def test_health_is_open_and_the_model_needs_the_token(semantic):
    seg, client, url = semantic
    health = httpx.get(f"{url}/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
        r = httpx.get(f"{url}/model", headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
        assert "bearer token" in r.json()["error"]
    r = httpx.post(f"{url}/predict", content=_png(_image((20, 20))))
    assert r.status_code == 401
    info = client.get("/model").json()
    assert info["task"] == "semantic" and info["classes"] == [0, 255] and info["spatial_dims"] == 2
    assert info["channels"] == 1 and info["tile"] == [16, 16] and info["source"] == "ckpt"
    assert info["unetseg_version"] and info["limits"]["max_upload_bytes"] == 256 * 1024
    assert info["limits"]["max_image_bytes"] == 2 * 2**30  # the readers' budget, data.max_image_gib


def test_png_tiff_and_nifti_uploads_are_answered_in_their_format_as_the_python_api(semantic, tmp_path):
    seg, client, _ = semantic
    png = _png(_image((50, 70)))
    r = client.post("/predict", files={"file": ("any/../name.png", png, "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    want = _expected(seg, png, tmp_path, "a.png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want) and len(np.unique(want)) == 2

    tif = _tiff(_image((40, 30), seed=1).astype(np.uint16) * 50)
    r = client.post("/predict", content=tif, headers={"Content-Type": "image/tiff"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
    assert np.array_equal(tifffile.imread(io.BytesIO(r.content)), _expected(seg, tif, tmp_path, "b.tif"))

    write_image(tmp_path / "c.nii.gz", _image((33, 21), seed=2).astype(np.float32), {"spatial_dims": 2})
    nii = (tmp_path / "c.nii.gz").read_bytes()
    r = client.post("/predict", files={"file": ("c.nii.gz", nii)})
    assert r.status_code == 200 and 'filename="labels.nii.gz"' in r.headers["content-disposition"]
    (tmp_path / "labels.nii.gz").write_bytes(r.content)
    assert np.array_equal(read_mask(tmp_path / "labels.nii.gz")[0], _expected(seg, nii, tmp_path, "d.nii.gz"))

    r = client.post("/predict?format=png&values=original", content=tif)  # another format, the mask values
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    assert np.array_equal(got, _expected(seg, tif, tmp_path, "b.tif").astype(np.uint8) * 255)


def test_json_answers_carry_coco_run_lengths_that_decode_to_the_mask(semantic, tmp_path):
    seg, client, _ = semantic
    png = _png(_image((37, 52), seed=3))
    want = _expected(seg, png, tmp_path, "a.png")
    for r in (client.post("/predict?format=json", content=png),
              client.post("/predict", content=png, headers={"Accept": "application/json"})):
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["task"] == "semantic" and body["shape"] == [37, 52]
        assert [c["value"] for c in body["classes"]] == [0, 255]
        for c in body["classes"]:
            mask = rle_decode(c["rle"])
            assert np.array_equal(mask, want == c["index"]) and c["pixels"] == int(mask.sum())


def test_instance_models_answer_ids_and_the_objects_table(instances, tmp_path):
    seg, client = instances
    png = _png(_image((64, 64), seed=4))
    (tmp_path / "a.png").write_bytes(png)
    image, meta = read_image(tmp_path / "a.png")
    ids, table = seg.predict_instances(image, spacing=meta["spacing"])  # as `unetseg predict` reads it
    assert ids.max() > 1  # objects to encode
    body = client.post("/predict?format=json", content=png).json()
    assert body["task"] == "instances" and body["count"] == len(table["id"])
    for row, k in zip(body["objects"], range(len(table["id"])), strict=True):
        assert set(row) == {*table, "rle"} and {"id", "area", "centroid_0", "bbox_1_stop"} <= set(row)
        assert all(row[name] == pytest.approx(float(table[name][k])) for name in table)
        assert np.array_equal(rle_decode(row["rle"]), ids == row["id"])
    r = client.post("/predict?format=tiff", content=png)
    assert r.status_code == 200 and r.headers["x-unetseg-objects"] == str(len(table["id"]))
    assert np.array_equal(tifffile.imread(io.BytesIO(r.content)), ids)
    r = client.post("/predict", content=png)  # a PNG upload: a PNG of the ids
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), ids)
    assert client.post("/predict?values=original", content=png).status_code == 422


def test_a_3d_model_answers_volumes_in_their_own_format_and_grid(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt", spatial_dims=3)
    seg = load(ckpt, device="cpu")
    volume = _image((8, 24, 20), seed=5).astype(np.int16)
    write_image(tmp_path / "v.nii.gz", volume, {"spatial_dims": 3, "spacing": (2.0, 0.5, 0.5)})
    image, meta = read_image(tmp_path / "v.nii.gz")
    want = seg.predict(image, spacing=meta["spacing"])
    app = create_app(load(ckpt, device="cpu"))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        data = (tmp_path / "v.nii.gz").read_bytes()
        r = client.post("/predict", files={"file": ("v.nii.gz", data)})
        assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
        (tmp_path / "labels.nii.gz").write_bytes(r.content)
        labels, labels_meta = read_mask(tmp_path / "labels.nii.gz")
        assert np.array_equal(labels, want) and labels_meta["spacing"] == meta["spacing"]
        np.testing.assert_allclose(labels_meta["affine"], meta["affine"])
        body = client.post("/predict?format=json", content=data).json()
        assert body["shape"] == [8, 24, 20]
        assert all(np.array_equal(rle_decode(c["rle"]), want == c["index"]) for c in body["classes"])
        tiff = client.post("/predict?format=tiff", content=data).content
        assert np.array_equal(tifffile.imread(io.BytesIO(tiff)), want)
        r = client.post("/predict?format=png", content=data)
        assert r.status_code == 422 and "format png holds 2D masks" in r.json()["error"]
        r = client.post("/predict", content=_png(_image((30, 30))))
        assert r.status_code == 422 and "a 2D image, but the model is 3D" in r.json()["error"]


def test_an_onnx_export_is_served_as_the_python_api_runs_it(tmp_path):
    pytest.importorskip("onnxruntime")
    from unetseg.export import export_model

    export_model(make_checkpoint(tmp_path / "ckpt"), "onnx", tmp_path / "model.onnx")
    seg = load(tmp_path / "model.onnx", device="cpu")
    png = _png(_image((45, 33), seed=6))
    want = _expected(seg, png, tmp_path, "a.png")
    app = create_app(load(tmp_path / "model.onnx", device="cpu"))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        info = client.get("/model").json()
        assert info["source"] == "model.onnx" and info["classes"] == [0, 255] and info["tile"] == [16, 16]
        r = client.post("/predict", content=png)
        assert r.status_code == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want)


def _png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def _tiff_bomb(width: int, height: int) -> bytes:
    """A 200-byte deflated TIFF whose header declares ``width`` x ``height`` pixels."""
    data = zlib.compress(b"\0" * width)
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 0),
            (277, 3, 1), (278, 4, height), (279, 4, len(data))]
    offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<I", offset if tag == 273 else value) if kind == 4
                                             else struct.pack("<HH", value, 0))
        for tag, kind, value in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + data


def test_too_large_uploads_and_pixel_bombs_are_413_before_decoding(semantic):
    seg, client, _ = semantic
    big = np.random.default_rng(0).bytes(300 * 1024)
    for r in (client.post("/predict", content=big), client.post("/predict", files={"file": ("x.png", big)})):
        assert r.status_code == 413 and "over the 0.25 MiB upload limit" in r.json()["error"]
    assert len(_tiff_bomb(40000, 40000)) < 300 and len(_png_bomb(40000, 40000)) < 300
    r = client.post("/predict", content=_tiff_bomb(40000, 40000))
    assert r.status_code == 413, r.text
    assert r.json()["error"].startswith("upload: declares 40000x40000 pixels, 6.0 GiB as float32, over the 2")
    r = client.post("/predict", content=_png_bomb(40000, 40000))
    assert r.status_code == 413 and "too large to decode" in r.json()["error"], r.text
    assert client.get("/health").json()["status"] == "ok"


def test_bad_uploads_get_one_line_4xx_and_the_server_goes_on(semantic):
    seg, client, _ = semantic
    png = _png(_image((30, 30)))
    cases = {
        "text": (client.post("/predict", content=b"hello, I am not an image\n"), 415, "not a PNG, TIFF"),
        "truncated": (client.post("/predict", content=png[: len(png) // 2]), 400, "truncated or corrupt PNG"),
        "empty": (client.post("/predict", content=b""), 400, "empty file"),
        "3D": (client.post("/predict", content=_tiff(_image((5, 30, 30)), metadata={"axes": "ZYX"})), 422,
               "a 3D image, but the model is 2D"),
        "channels": (client.post("/predict", content=_tiff(_image((2, 30, 30)), metadata={"axes": "CYX"})),
                     422, "2 channel(s), the model expects 1"),
        "no file field": (client.post("/predict", files={"image": ("a.png", png)}), 400, "named `file`"),
        "bad format": (client.post("/predict?format=bmp", content=png), 400, "format 'bmp'"),
    }
    for name, (r, status, needle) in cases.items():
        assert r.status_code == status, (name, r.text)
        message = r.json()["error"]
        assert needle in message and "\n" not in message and "/tmp" not in message, (name, message)
    r = client.post("/predict", content=png)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_concurrent_requests_of_one_shape_share_batches_and_get_their_own_answers(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    seg = load(ckpt, device="cpu")
    images = [_image((40, 40), seed=k) for k in range(8)]
    want = [seg.predict(im.astype(np.float32)) for im in images]
    app = create_app(load(ckpt, device="cpu"), limits=Limits(max_batch=8, batch_wait_s=0.2))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        start = threading.Barrier(len(images))

        def send(k: int) -> httpx.Response:
            start.wait()
            return client.post("/predict", content=_png(images[k]))

        with ThreadPoolExecutor(len(images)) as pool:
            answers = list(pool.map(send, range(len(images))))
        # the worker counts a batch just after answering it
        wait_for(lambda: client.get("/health").json()["served"] == len(images))
        stats = client.get("/health").json()
    assert [r.status_code for r in answers] == [200] * len(images)
    for r, w in zip(answers, want, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), w)
    assert stats["largest_batch"] > 1 and stats["batches"] < stats["served"]


def test_a_full_queue_answers_503_with_retry_after(tmp_path):
    ckpt = make_checkpoint(tmp_path / "ckpt")
    app = create_app(load(ckpt, device="cpu"), limits=Limits(queue_size=1, max_batch=1))
    slow = _png(_image((1024, 1024)))  # about a second with 16-pixel tiles
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/predict", content=slow)
            wait_for(lambda: client.get("/health").json()["running"] == 1)
            second = pool.submit(client.post, "/predict", content=slow)
            wait_for(lambda: client.get("/health").json()["queued"] == 1)
            r = client.post("/predict", content=_png(_image((20, 20))))
            assert r.status_code == 503 and "queue is full" in r.json()["error"]
            assert int(r.headers["Retry-After"]) >= 1
            assert first.result().status_code == 200 and second.result().status_code == 200
        assert client.post("/predict", content=_png(_image((20, 20)))).status_code == 200
