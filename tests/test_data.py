"""The data stage: bundled datasets, cleaning, stratified splits, run files, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from pydantic import ValidationError

from layerdrift.config import DataConfig, RunConfig
from layerdrift.storage.rundir import RunDir
from layerdrift.tasks.data import (
    DatasetError,
    clean_texts,
    data_complete,
    load_labelled_texts,
    prepare_data,
    read_dataset_info,
    read_split,
    split_frame,
)


def csv_config(path, **sizes) -> DataConfig:
    sizes = {"train_size": 10, "val_size": 4, "probe_size": 4} | sizes
    return DataConfig(dataset=f"csv:{path}", **sizes)


def run_config(tmp_path, csv, **data) -> RunConfig:
    data = {"dataset": f"csv:{csv}", "train_size": 300, "val_size": 100, "probe_size": 100} | data
    return RunConfig(name="d", runs_root=str(tmp_path / "runs"), data=data)


def test_rotten_tomatoes_bundled():
    frame, names, identity = load_labelled_texts(DataConfig(dataset="rotten-tomatoes"))
    assert len(frame) == 12_752 and identity["rows"] == 12_752
    assert names == ["fresh", "rotten"]
    assert set(frame["label"]) == {0, 1}
    assert frame["text"].is_unique and (frame["text"] == frame["text"].str.strip()).all()
    assert identity["source"].endswith("rotten_tomatoes_corpus_full.csv.bz2")


def test_bbc_news_bundled():
    frame, names, identity = load_labelled_texts(DataConfig(dataset="bbc-news"))
    # 2,225 articles on disk; 98 are verbatim duplicates of another (same topic).
    assert len(frame) == 2_127
    assert names == ["business", "entertainment", "politics", "sports", "tech"]
    assert frame["label"].value_counts().sort_index().tolist() == [503, 369, 403, 505, 347]
    assert frame["text"].str.contains("£15.8m").any()  # the one Latin-1 file decoded right


def test_clean_strips_drops_and_maps_labels():
    raw = pd.DataFrame(
        {
            "text": ["  b text ", "a text", "", "   ", "a text", None, "c text"],
            "label": ["zeta", "alpha", "alpha", "zeta", "zeta", "alpha", "alpha"],
        }
    )
    frame, names = clean_texts(raw)
    assert names == ["alpha", "zeta"]
    assert frame["text"].tolist() == ["b text", "a text", "c text"]
    assert frame["label"].tolist() == [1, 0, 0]  # the first of duplicates is kept


def test_identity_hash_follows_content(tmp_path, separable_csv):
    _, _, first = load_labelled_texts(csv_config(separable_csv))
    changed = pd.read_csv(separable_csv)
    changed.loc[0, "text"] = "something else entirely"
    changed.to_csv(tmp_path / "changed.csv", index=False)
    _, _, second = load_labelled_texts(csv_config(tmp_path / "changed.csv"))
    assert first["rows"] == second["rows"] == 600
    assert first["sha256"] != second["sha256"]


def test_split_sizes_stratified_disjoint_seeded(separable_csv):
    frame, _, _ = load_labelled_texts(csv_config(separable_csv))
    cfg = csv_config(separable_csv, train_size=300, val_size=100, probe_size=60)
    splits = split_frame(frame, cfg, seed=3)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "validation": 100, "probe": 60}
    for part in splits.values():  # the source is balanced, so each split is exactly balanced
        assert part["label"].value_counts().tolist() == [len(part) // 2] * 2
    ids = [set(part["id"]) for part in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for part in splits.values():  # id points back at the same text
        assert (frame.loc[part["id"], "text"].to_numpy() == part["text"].to_numpy()).all()
    again = split_frame(frame, cfg, seed=3)
    other = split_frame(frame, cfg, seed=4)
    assert again["probe"]["id"].tolist() == splits["probe"]["id"].tolist()
    assert other["probe"]["id"].tolist() != splits["probe"]["id"].tolist()


def test_prepare_data_round_trip(tmp_path, separable_csv):
    cfg = run_config(tmp_path, separable_csv)
    run = RunDir(cfg.run_url)
    assert not data_complete(run)
    prepare_data(run, cfg)
    assert data_complete(run)
    info = read_dataset_info(run)
    assert info["label_names"] == ["neg", "pos"]
    assert info["split_sizes"] == {"train": 300, "validation": 100, "probe": 100}
    source = pd.read_csv(separable_csv)
    for split in ("train", "validation", "probe"):
        part = read_split(run, split)
        assert list(part.columns) == ["text", "label", "id"]
        assert part["label"].dtype == "int64"
        expected = source.loc[part["id"], "label"].map({"neg": 0, "pos": 1})
        assert part["label"].tolist() == expected.tolist()
    marker = tmp_path / "runs" / "d" / "data" / "dataset.json"
    before = marker.stat().st_mtime_ns
    prepare_data(run, cfg)  # complete: left alone
    assert marker.stat().st_mtime_ns == before
    with pytest.raises(DatasetError, match="another data config"):
        prepare_data(run, run_config(tmp_path, separable_csv, train_size=200))


def test_prepare_data_on_fsspec_url(separable_csv):
    cfg = RunConfig(
        name="mem",
        runs_root="memory://data-test",
        data={"dataset": f"csv:{separable_csv}", "train_size": 50, "val_size": 20,
              "probe_size": 20},
    )  # fmt: skip
    run = RunDir(cfg.run_url)
    prepare_data(run, cfg)
    assert data_complete(run) and len(read_split(run, "probe")) == 20
    assert json.loads(run.read_text("data", "dataset.json"))["identity"]["rows"] == 600


def test_text_that_looks_numeric_stays_text(tmp_path):
    rows = [{"text": str(1000 + i) if i % 3 else f"word {i}", "label": i % 2} for i in range(30)]
    pd.DataFrame(rows).to_csv(tmp_path / "n.csv", index=False)
    cfg = RunConfig(
        name="n",
        runs_root=str(tmp_path / "runs"),
        data={"dataset": f"csv:{tmp_path / 'n.csv'}", "train_size": 10, "val_size": 4,
              "probe_size": 4},
    )  # fmt: skip
    run = RunDir(cfg.run_url)
    prepare_data(run, cfg)
    texts = pd.concat([read_split(run, s) for s in ("train", "validation", "probe")])["text"]
    assert all(isinstance(t, str) for t in texts) and texts.str.fullmatch(r"\d{4}").any()


# Bad input ------------------------------------------------------------------------------


def test_unknown_dataset_name():
    with pytest.raises(ValidationError, match="unknown dataset 'imdb'"):
        DataConfig(dataset="imdb")
    with pytest.raises(DatasetError, match="unknown dataset 'imdb'.*csv:PATH"):
        load_labelled_texts(DataConfig.model_construct(dataset="imdb"))


def test_csv_missing(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_labelled_texts(csv_config(tmp_path / "nope.csv"))


def test_csv_empty(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DatasetError, match="is empty"):
        load_labelled_texts(csv_config(tmp_path / "empty.csv"))
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DatasetError, match="no rows"):
        load_labelled_texts(csv_config(tmp_path / "header.csv"))


def test_missing_columns_are_listed(tmp_path):
    pd.DataFrame({"review": ["a", "b"], "label": [0, 1]}).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(DatasetError, match=r"no text column 'text' \(it has \['review', 'label'\]"):
        load_labelled_texts(csv_config(tmp_path / "a.csv"))
    cfg = DataConfig(dataset=f"csv:{tmp_path / 'a.csv'}", text_column="review", label_column="y")
    with pytest.raises(DatasetError, match="no label column 'y'.*data.label_column"):
        load_labelled_texts(cfg)
    frame, names, _ = load_labelled_texts(cfg.model_copy(update={"label_column": "label"}))
    assert frame["text"].tolist() == ["a", "b"] and names == ["0", "1"]


def test_fewer_than_two_classes(tmp_path):
    pd.DataFrame({"text": ["a", "b", "c"], "label": ["x"] * 3}).to_csv(
        tmp_path / "one.csv", index=False
    )
    with pytest.raises(DatasetError, match=r"1 class\(es\) \['x'\].*at least 2"):
        load_labelled_texts(csv_config(tmp_path / "one.csv"))


def test_too_few_examples(separable_csv):
    cfg = csv_config(separable_csv, train_size=500, val_size=80, probe_size=40)
    frame, _, _ = load_labelled_texts(cfg)
    with pytest.raises(DatasetError, match="has 600 usable texts but the splits ask for 620"):
        split_frame(frame, cfg, seed=0)


def test_split_too_small_for_stratification(separable_csv):
    cfg = csv_config(separable_csv, train_size=10, val_size=1, probe_size=5)
    frame, _, _ = load_labelled_texts(cfg)
    with pytest.raises(DatasetError, match="at least one example per class"):
        split_frame(frame, cfg, seed=0)


def test_non_text_values(tmp_path):
    pd.DataFrame({"text": [1.5, 2.5, 3.5], "label": [0, 1, 0]}).to_csv(
        tmp_path / "num.csv", index=False
    )
    with pytest.raises(DatasetError, match="3 non-text values.*1.5"):
        load_labelled_texts(csv_config(tmp_path / "num.csv"))


def test_hf_without_datasets_library(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name, *a)
    )
    with pytest.raises(DatasetError, match="needs the `datasets` library: `pip install datasets`"):
        load_labelled_texts(DataConfig(dataset="hf:imdb"))


def test_numeric_labels_sort_numerically(tmp_path):
    labels = [10, 2, None, 2, 10, 1]
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(6)], "label": labels})
    frame.to_csv(tmp_path / "num.csv", index=False)  # the gap makes the column float
    cleaned, names, _ = load_labelled_texts(csv_config(tmp_path / "num.csv"))
    assert names == ["1", "2", "10"]
    assert cleaned["label"].tolist() == [2, 1, 1, 2, 0]
    assert cleaned["text"].tolist() == ["t0", "t1", "t3", "t4", "t5"]


def test_hf_dataset_through_the_datasets_library(monkeypatch):
    """`hf:NAME:CONFIG` calls datasets.load_dataset and names ClassLabel ids."""
    import importlib.machinery
    import sys
    import types

    calls = []

    class ClassLabel:
        names = ["negative", "positive"]

        def int2str(self, value: int) -> str:
            return self.names[value]

    class Loaded:
        features = {"sentence": object(), "label": ClassLabel()}

        def to_pandas(self) -> pd.DataFrame:
            return pd.DataFrame({"sentence": ["fine", "bad", "good"], "label": [1, 0, 1]})

    def load_dataset(name, config_name, split):
        calls.append((name, config_name, split))
        return Loaded()

    fake = types.ModuleType("datasets")
    fake.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    cfg = DataConfig(dataset="hf:glue:sst2", text_column="sentence", hf_split="validation")
    frame, names, identity = load_labelled_texts(cfg)
    assert calls == [("glue", "sst2", "validation")]
    assert names == ["negative", "positive"] and frame["label"].tolist() == [1, 0, 1]
    assert identity["source"] == "hf:glue:sst2[validation]"
