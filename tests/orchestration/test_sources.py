"""A user's own files: Parquet, CSV and image folders, trained and unlearned by the data set's own ids."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from orchestration.config import DataConfig
from orchestration.datasets import load_dataset
from orchestration.runs import open_session
from sisa.unlearning import audit
from tests.orchestration.test_cli import run_cli

CLASSES = ("bird", "cat", "dog")
RECIPE = ["--engine", "local", "--no-track", "--set", "sisa.num_shards=2", "--set", "sisa.num_slices=2",
          "--set", "sisa.epochs=4"]


def png(label: int, rng: np.random.Generator, size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    """A noisy image whose bright row band (rows 2*label .. 2*label+2) is its class."""
    pixels = rng.integers(0, 60, size, dtype=np.uint8)
    pixels[2 * label : 2 * label + 3] += 180
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def image_table(n: int, prefix: str, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    return pa.table({"user_id": [f"{prefix}{i}" for i in range(n)], "label": [CLASSES[y] for y in labels],
                     "image": pa.array([png(int(y), rng) for y in labels], pa.binary())})


def feature_rows(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 4)) + 2.5 * np.eye(3, 4)[labels]
    return [f"rec-{i:04d}" for i in range(n)], [CLASSES[y] for y in labels], x


def _trained(capsys, run_dir: str, *settings: str) -> None:
    code, out, err = run_cli(capsys, "train", "--run-dir", run_dir, *RECIPE, *settings)
    assert code == 0, err
    assert "trained 4 slice(s)" in out


def _forget_and_audit(capsys, run_dir: str, keys: list[str], *how: str) -> str:
    """Forget `keys` (given as `how`), and check no checkpoint saw them before returning the output."""
    session = open_session(run_dir)
    ids = session.run.table.lookup(keys)
    assert audit(session.run.store, ids), "before the deletion some checkpoint saw the ids"
    code, out, err = run_cli(capsys, "forget", "--run-dir", run_dir, *how)
    assert code == 0, err
    assert f"{len(keys)} sample(s) forgotten" in out and all(k in out for k in keys)
    assert audit(open_session(run_dir).run.store, ids) == []
    return out


def test_parquet_with_string_ids_and_png_images_trains_and_forgets_by_user_id(tmp_path, capsys):
    pq.write_table(image_table(120, "user-", 0), tmp_path / "train.parquet")
    pq.write_table(image_table(30, "test-", 1), tmp_path / "test.parquet")
    run_dir = str(tmp_path / "run")
    _trained(capsys, run_dir, "--set", "data.name=parquet", "--set", f"data.path={tmp_path / 'train.parquet'}",
             "--set", f"data.test_path={tmp_path / 'test.parquet'}", "--set", "data.id_column=user_id",
             "--set", "model.name=cnn", "--set", "model.channels=8", "--set", "sisa.augment=true",
             "--set", "sisa.augment_padding=1")
    _forget_and_audit(capsys, run_dir, ["user-3", "user-17"], "--ids", "user-3, user-17", "--reason", "erasure")

    code, out, err = run_cli(capsys, "status", "--run-dir", run_dir, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["classes"] == ["bird", "cat", "dog"] and info["data"]["retained"] == 118
    assert info["requests"][0]["ids"] in ("user-3, user-17", "user-17, user-3")
    code, out, _ = run_cli(capsys, "predict", "--run-dir", run_dir, "--ids", "test-0,test-5",
                           "--output", str(tmp_path / "p.parquet"))
    predictions = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert code == 0 and predictions["user_id"] == ["test-0", "test-5"]
    assert set(predictions["label"]) <= set(CLASSES) and set(predictions["predicted"]) <= set(CLASSES)


def test_csv_with_string_ids_trains_and_forgets_ids_from_text_and_parquet_files(tmp_path, capsys):
    keys, labels, x = feature_rows(160, 0)
    lines = ["id,label,f0,f1,f2,f3"] + [f"{k},{y},{','.join(f'{v:.4f}' for v in row)}" for k, y, row in zip(keys, labels, x)]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    settings = ["--set", "data.name=csv", "--set", f"data.path={tmp_path / 'data.csv'}", "--set", "data.id_column=id"]
    run_dir = str(tmp_path / "run")
    _trained(capsys, run_dir, *settings)
    train = open_session(run_dir).run.table
    assert len(train) < 160 and train.sample_shape == (4,), "a seeded test_fraction of the rows is held out"
    first, second = train.keys[:2].to_pylist(), train.keys[2:5].to_pylist()

    (tmp_path / "ids.txt").write_text(f"# erasure requests\n{first[0]}\n\n{first[1]}\n")
    _forget_and_audit(capsys, run_dir, first, "--ids-file", str(tmp_path / "ids.txt"))
    pq.write_table(pa.table({"id": second}), tmp_path / "ids.parquet")
    _forget_and_audit(capsys, run_dir, second, "--ids-file", str(tmp_path / "ids.parquet"))


def test_imagefolder_ids_are_relative_paths_and_forget_by_them(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(90):
        label = i % 3
        folder = tmp_path / "images" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        # One RGB image among grayscale ones: the data set becomes RGB rather than failing.
        (folder / f"img{i:03d}.png").write_bytes(png(label, rng, mode="RGB" if i == 5 else "L"))
    (tmp_path / "images" / "cat" / "notes.txt").write_text("not an image: skipped")
    run_dir = str(tmp_path / "run")
    _trained(capsys, run_dir, "--set", "data.name=imagefolder", "--set", f"data.path={tmp_path / 'images'}")
    train = open_session(run_dir).run.table
    assert train.sample_shape == (3, 8, 8) and train.class_names == CLASSES
    keys = train.keys[:2].to_pylist()
    assert all(k.split("/")[0] in CLASSES and k.endswith(".png") for k in keys)
    _forget_and_audit(capsys, run_dir, keys, "--ids", ",".join(keys))


def test_unknown_repeated_and_already_deleted_user_ids_are_refused_by_name(tmp_path, capsys):
    pq.write_table(image_table(60, "user-", 0), tmp_path / "train.parquet")
    run_dir = str(tmp_path / "run")
    settings = ["--set", "data.name=parquet", "--set", f"data.path={tmp_path / 'train.parquet'}",
                "--set", "data.id_column=user_id"]
    _trained(capsys, run_dir, *settings)
    key = open_session(run_dir).run.table.keys[0].as_py()
    for ids, message in (("user-999,nobody", "id(s) ['user-999', 'nobody'] are not in the data set"),
                         (f"{key},{key}", f"ids appear more than once in the request: {key}")):
        code, _, err = run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", ids)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
        assert open_session(run_dir).run.ledger.requests() == [], "a refused request records nothing"
    assert run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", key)[0] == 0
    code, _, err = run_cli(capsys, "forget", "--run-dir", run_dir, "--ids", key)
    assert code == 2 and f"ids {key} were already deleted by request r-0001" in err


def test_holdout_of_a_file_data_set_keeps_every_other_id_where_it_was_when_rows_are_removed(tmp_path):
    keys, labels, x = feature_rows(400, 0)
    table = pa.table({"sample_id": keys, "label": labels, **{f"f{j}": x[:, j] for j in range(4)}})
    pq.write_table(table, tmp_path / "all.parquet")
    pq.write_table(table.slice(50), tmp_path / "fewer.parquet")
    full = load_dataset(DataConfig(name="parquet", path=str(tmp_path / "all.parquet")))
    fewer = load_dataset(DataConfig(name="parquet", path=str(tmp_path / "fewer.parquet")))
    for a, b in zip(full, fewer):
        kept = set(b.keys.to_pylist())
        assert kept == set(a.keys.to_pylist()) - set(keys[:50])
    assert 40 < len(full[1]) < 120, "about test_fraction = 0.2 of the ids are held out"


def test_a_directory_of_parquet_files_by_uri_and_a_list_column_with_data_shape(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (60, 16), dtype=np.uint8)
    (tmp_path / "parts").mkdir()
    for part in range(3):
        ids = np.arange(part * 20, part * 20 + 20)
        rows = pa.array(list(pixels[ids]), pa.list_(pa.uint8()))
        table = pa.table({"sample_id": ids, "label": ids % 2, "x": rows})
        pq.write_table(table, tmp_path / "parts" / f"part-{part}.parquet")
    (tmp_path / "parts" / "_SUCCESS").write_text("")
    train, test = load_dataset(DataConfig(name="parquet", path=f"file://{tmp_path / 'parts'}", shape=(1, 4, 4)))
    assert len(train) + len(test) == 60 and train.sample_shape == (1, 4, 4) and train.keys is None
    assert np.isin(train.ids, np.arange(60)).all(), "integer ids are the sample_ids"
    x, _ = train.tensors(train.ids)
    assert np.array_equal(x.reshape(len(train), 16).numpy(), pixels[train.ids]), "uint8 values kept, not rescaled"


# Malformed inputs: (what to write, the setting values, what the one-line error must say).
def _write(tmp_path, name: str, table: pa.Table | str | bytes) -> str:
    path = tmp_path / name
    if isinstance(table, pa.Table):
        pq.write_table(table, path)
    elif isinstance(table, str):
        path.write_text(table)
    else:
        path.write_bytes(table)
    return str(path)


def _images(*blobs: bytes) -> pa.Table:
    return pa.table({"sample_id": [f"u{i}" for i in range(len(blobs))], "label": ["a"] * len(blobs),
                     "image": pa.array(list(blobs), pa.binary())})


_RNG = np.random.default_rng(0)
BAD = {
    "missing label column": (lambda: pa.table({"sample_id": [1, 2], "f": [0.1, 0.2]}),
                             ["bad.parquet: no column 'label' (the label column (data.label_column)); columns: "
                              "['sample_id', 'f']"]),
    "duplicate string ids": (lambda: pa.table({"sample_id": ["u1", "u2", "u1"], "label": [0, 1, 0], "f": [1.0, 2.0, 3.0]}),
                             ["id 'u1' appears twice (", "bad.parquet, row 0 and ", "bad.parquet, row 2)"]),
    "duplicate integer ids": (lambda: pa.table({"sample_id": [4, 5, 5], "label": [0, 1, 0], "f": [1.0, 2.0, 3.0]}),
                              ["id 5 appears twice (", "row 1 and ", "row 2)"]),
    "null id": (lambda: pa.table({"sample_id": ["u1", None], "label": [0, 1], "f": [1.0, 2.0]}),
                ["bad.parquet, row 1: the id column 'sample_id' is empty; every row needs an id"]),
    "negative id": (lambda: pa.table({"sample_id": [3, -1], "label": [0, 1], "f": [1.0, 2.0]}),
                    ["bad.parquet, row 1: id -1 is negative; integer ids must be >= 0"]),
    "float ids": (lambda: pa.table({"sample_id": [0.5, 1.5], "label": [0, 1], "f": [1.0, 2.0]}),
                  ["the id column 'sample_id' holds double; expected integers or strings"]),
    "null label": (lambda: pa.table({"sample_id": [1, 2], "label": ["a", None], "f": [1.0, 2.0]}),
                   ["bad.parquet, row 1: the label column 'label' is empty"]),
    "float labels": (lambda: pa.table({"sample_id": [1, 2], "label": [0.0, 1.0], "f": [1.0, 2.0]}),
                     ["the label column 'label' holds double; expected integers (classes 0, 1, ...) or strings"]),
    "string feature": (lambda: pa.table({"sample_id": [1, 2], "label": [0, 1], "color": ["red", "blue"]}),
                       ["feature column 'color' holds string; expected numbers"]),
    "missing feature value": (lambda: pa.table({"sample_id": [1, 2], "label": [0, 1], "f": [1.0, None]}),
                              ["bad.parquet, row 1: feature column 'f' is empty"]),
    "mixed shapes": (lambda: pa.table({"sample_id": [1, 2, 3], "label": [0, 1, 0],
                                       "x": [[1.0, 2.0], [1.0, 2.0], [1.0, 2.0, 3.0]]}),
                     ["bad.parquet, row 2: feature column 'x' has 3 values, but ", "row 0 has 2; every sample needs the "
                      "same shape"]),
    "mixed image sizes": (lambda: _images(png(0, _RNG), png(0, _RNG, size=(8, 9))),
                          ["bad.parquet, row 1: image is 9x8 pixels, but ", "row 0 is 8x8; every image needs the same "
                           "size"]),
    "undecodable image": (lambda: _images(png(0, _RNG), b"\x89PNG not really"),
                          ["bad.parquet, row 1: cannot decode the image in column 'image'", "expected PNG or JPEG bytes"]),
    "not parquet": (lambda: "just text", ["bad.parquet is not a readable Parquet file"]),
    "no rows": (lambda: pa.table({"sample_id": pa.array([], pa.int64()), "label": pa.array([], pa.int64()),
                                  "f": pa.array([], pa.float64())}), ["bad.parquet holds no rows"]),
}


def _assert_refused(capsys, tmp_path, settings: list[str], expected: list[str]) -> None:
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--run-dir", str(run_dir), "--engine", "local", "--no-track", *settings)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert all(part in err for part in expected), err
    assert not run_dir.exists(), "nothing is written for bad data"
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir()), "no cache file either"


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_parquet_is_refused_naming_file_and_row_with_nothing_written(tmp_path, capsys, monkeypatch, case):
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    make, expected = BAD[case]
    path = _write(tmp_path, "bad.parquet", make())
    _assert_refused(capsys, tmp_path, ["--set", "data.name=parquet", "--set", f"data.path={path}"], expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("id,label,f\nu1,0,1.5\nu2,1\n", ["bad.csv is not a readable CSV file", "Expected 3 columns, got 2"]),
     ("id,label,f\nu1,0,1.5\nu2,1,abc\n", ["feature column 'f' holds string; expected numbers"]),
     ("id,label,f\nu1,0,1.5\nu1,1,2.5\n", ["id 'u1' appears twice (", "bad.csv, row 0 and ", "bad.csv, row 1)"])],
    ids=["ragged row", "text in a number column", "duplicate id"],
)
def test_malformed_csv_is_refused_with_nothing_written(tmp_path, capsys, monkeypatch, text, expected):
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    path = _write(tmp_path, "bad.csv", text)
    _assert_refused(capsys, tmp_path, ["--set", "data.name=csv", "--set", f"data.path={path}", "--set", "data.id_column=id"],
                    expected)


def test_directory_with_a_file_lacking_a_column_names_that_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    (tmp_path / "parts").mkdir()
    pq.write_table(pa.table({"sample_id": [1, 2], "label": [0, 1], "f": [1.0, 2.0]}), tmp_path / "parts" / "a.parquet")
    pq.write_table(pa.table({"sample_id": [3, 4], "f": [1.0, 2.0]}), tmp_path / "parts" / "b.parquet")
    _assert_refused(capsys, tmp_path, ["--set", "data.name=parquet", "--set", f"data.path={tmp_path / 'parts'}"],
                    ["b.parquet: no column 'label'"])


def test_imagefolder_with_an_undecodable_image_names_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNLEARN_CACHE", str(tmp_path / "cache"))
    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        (tmp_path / "images" / label / "ok.png").write_bytes(png(0, _RNG))
    (tmp_path / "images" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    _assert_refused(capsys, tmp_path, ["--set", "data.name=imagefolder", "--set", f"data.path={tmp_path / 'images'}"],
                    [f"{tmp_path / 'images' / 'b' / 'broken.jpg'}: cannot decode the image"])


def test_missing_data_path_is_refused(tmp_path, capsys):
    _assert_refused(capsys, tmp_path, ["--set", "data.name=parquet", "--set", f"data.path={tmp_path / 'nope.parquet'}"],
                    ["data.path", "nope.parquet does not exist"])
    _assert_refused(capsys, tmp_path, ["--set", "data.name=csv"], ["set data.path to a file, a directory of files or a URI"])
