"""MTT, GTZAN (genre + GTZAN-Rhythm beats) and EmoMusic loaders against fakes in the shipped layout.

Metadata is written by hand with the real headers, quoting and line ends (docs/evaluation.md §2.1-2.4,
§2.9 and its addenda), then checked item by item; write_layout is checked by round trips.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicssl.evaluate.tasks import DatasetError, LayoutExample, get_task
from musicssl.evaluate.tasks import emomusic, gtzan, mtt

SR = 16000


def _audio(seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def _write_audio(path: Path, seconds: float = 0.5, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _audio(seconds), SR, format=fmt)


def _by_key(items) -> dict:
    return {item.key: item for item in items}


def _keys(splits) -> dict[str, list[str]]:
    return {split: sorted(item.key for item in splits[split]) for split in ("train", "valid", "test")}


def _has_note(splits, *fragments: str) -> bool:
    return any(all(fragment in note for fragment in fragments) for note in splits.notes)


# ----------------------------------------------------------------------------- MTT

MTT_CSV = (
    '"clip_id"\t"guitar"\t"classical"\t"slow"\t"mp3_path"\r\n'
    '"2"\t"1"\t"1"\t"0"\t"0/a-song-0-29.mp3"\r\n'
    '"6"\t"0"\t"1"\t"0"\t"b/b-song-0-29.mp3"\r\n'
    '"10"\t"0"\t"0"\t"0"\t"c/c-song-0-29.mp3"\r\n'
    '"11"\t"1"\t"0"\t"1"\t"d/d-song-0-29.mp3"\r\n'
    '"12"\t"0"\t"0"\t"1"\t"f/f-song-0-29.mp3"\r\n'
    '"35644"\t"1"\t"0"\t"0"\t"6/norine_braun-now_and_zen-08-gently-117-146.mp3"\r\n'
    '"13"\t"1"\t"0"\t"0"\t"e/not-downloaded-0-29.mp3"\r\n'
    '"14"\t"2"\t"0"\t"0"\t"e/bad-flag-0-29.mp3"\r\n'
)
MTT_AUDIO = ["0/a-song-0-29.mp3", "b/b-song-0-29.mp3", "c/c-song-0-29.mp3", "d/d-song-0-29.mp3",
             "f/f-song-0-29.mp3", "6/norine_braun-now_and_zen-08-gently-117-146.mp3", "e/bad-flag-0-29.mp3"]


def _mtt_fake(root: Path, audio_subdir: str = "mp3") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations_final.csv").write_bytes(MTT_CSV.encode("utf-8"))
    for relative in MTT_AUDIO:
        _write_audio(root / audio_subdir / relative, 0.2, "MP3")


@pytest.mark.parametrize("audio_subdir", ["mp3", "."])
def test_mtt_reads_quoted_crlf_annotations_with_folder_split(tmp_path, audio_subdir):
    _mtt_fake(tmp_path, audio_subdir)
    task = get_task("mtt")
    splits = task.load(tmp_path)
    # guitar 4 positives; classical and slow tie at 2: the earlier column wins.
    assert task.protocol.outputs == ("guitar", "classical", "slow")
    assert _keys(splits) == {"train": ["0/a-song-0-29.mp3", "b/b-song-0-29.mp3"], "valid": ["c/c-song-0-29.mp3"],
                             "test": ["d/d-song-0-29.mp3", "f/f-song-0-29.mp3"]}
    expected = {"0/a-song-0-29.mp3": [1, 1, 0], "b/b-song-0-29.mp3": [0, 1, 0], "c/c-song-0-29.mp3": [0, 0, 0],
                "d/d-song-0-29.mp3": [1, 0, 1], "f/f-song-0-29.mp3": [0, 0, 1]}
    items = _by_key(splits.train + splits.valid + splits.test)
    for key, target in expected.items():
        assert items[key].target.dtype == np.float32
        np.testing.assert_array_equal(items[key].target, target)
        assert items[key].path == tmp_path / audio_subdir / key
        assert (items[key].offset, items[key].duration, items[key].group) == (0.0, None, "")
    assert _has_note(splits, "known-corrupt", "norine_braun")
    assert _has_note(splits, "1 clips listed", "no MP3", "not-downloaded-0-29.mp3")
    assert _has_note(splits, "malformed", "line 9")
    assert _has_note(splits, "1 clips have none of the top-3 tags; kept")
    assert _has_note(splits, "only 3 tag columns")
    # The class-level protocol stays MARBLE's published list (usable without data).
    assert type(task).protocol.outputs == mtt.PUBLISHED_TOP50 and len(mtt.PUBLISHED_TOP50) == 50


def test_mtt_top50_counts_over_all_rows_and_breaks_ties_by_column(tmp_path):
    # 55 tag columns; column j is positive in the first 1 + j % 5 rows, so counts tie in groups of 11.
    counts = [1 + j % 5 for j in range(55)]
    header = ["clip_id", *(f"tag{j}" for j in range(55)), "mp3_path"]
    folders = ["0", "1", "c", "d", "e"]
    lines = ["\t".join(header)]
    for row, folder in enumerate(folders):
        flags = ["1" if row < counts[j] else "0" for j in range(55)]
        lines.append("\t".join([str(row + 1), *flags, f"{folder}/clip{row}.mp3"]))
        _write_audio(tmp_path / "mp3" / folder / f"clip{row}.mp3", 0.2, "MP3")
    (tmp_path / "annotations_final.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = get_task("mtt")
    splits = task.load(tmp_path)
    outputs = task.protocol.outputs
    assert len(outputs) == 50
    assert outputs[:3] == ("tag4", "tag9", "tag14")          # count 5, column order
    assert outputs[-6:] == ("tag0", "tag5", "tag10", "tag15", "tag20", "tag25")  # the count-1 group, cut at 50
    assert set(header[1:-1]) - set(outputs) == {"tag30", "tag35", "tag40", "tag45", "tag50"}
    # Row 0 has every tag; row 4 (folder e, test) only count-5 tags.
    test_item = _by_key(splits.test)["e/clip4.mp3"]
    np.testing.assert_array_equal(test_item.target, [1.0 if name in ("tag4", "tag9", "tag14", "tag19", "tag24",
                                                                     "tag29", "tag34", "tag39", "tag44", "tag49",
                                                                     "tag54") else 0.0 for name in outputs])
    assert not _has_note(splits, "tag columns")


def test_mtt_full_size_note_only_for_the_full_table(tmp_path, monkeypatch):
    _mtt_fake(tmp_path)
    assert not _has_note(get_task("mtt").load(tmp_path), "differ from the protocol")
    monkeypatch.setattr(mtt, "FULL_ROWS", 7)  # the fake's 7 well-formed rows stand for 25,863
    splits = get_task("mtt").load(tmp_path)
    assert _has_note(splits, "{'train': 2, 'valid': 1, 'test': 2}", "18706")


def test_mtt_errors_name_the_file_and_source(tmp_path):
    with pytest.raises(DatasetError, match=r"annotations_final\.csv.*mirg\.city\.ac\.uk"):
        get_task("mtt").load(tmp_path)
    (tmp_path / "annotations_final.csv").write_text("id,tags,path\n1,0,0/a.mp3\n")
    with pytest.raises(DatasetError, match="clip_id"):
        get_task("mtt").load(tmp_path)
    _mtt_fake(tmp_path)
    for relative in ("c/c-song-0-29.mp3",):
        (tmp_path / "mp3" / relative).unlink()
    with pytest.raises(DatasetError, match="valid split is empty"):
        get_task("mtt").load(tmp_path)
    with pytest.raises(DatasetError, match="unknown option"):
        get_task("mtt").load(tmp_path, splits_dir="x")


def test_mtt_write_layout_round_trip(tmp_path):
    labels = {"train": [("rock", "guitar"), ("rock",), ()], "valid": [("piano",)],
              "test": [("guitar",), ("piano", "rock")]}
    examples = [LayoutExample(f"clip {split} {i}", _audio(0.3, i), SR, split, label)
                for split, split_labels in labels.items() for i, label in enumerate(split_labels)]
    mtt.write_layout(tmp_path, examples)
    raw = (tmp_path / "annotations_final.csv").read_bytes()
    assert raw.startswith(b'"clip_id"\t"rock"\t"guitar"\t"piano"\t"mp3_path"\r\n')
    task = get_task("mtt")
    splits = task.load(tmp_path)
    assert task.protocol.outputs == ("rock", "guitar", "piano")  # counts 3, 2, 2
    items = {item.key.split("/")[1]: (split, item) for split in ("train", "valid", "test") for item in splits[split]}
    assert len(items) == len(examples)
    for example in examples:
        split, item = items[f"{example.name.replace(' ', '_')}.mp3"]
        assert split == example.split
        assert item.key[0] in {"train": "0123456789ab", "valid": "c", "test": "def"}[split]
        np.testing.assert_array_equal(item.target, [float(tag in example.label) for tag in task.protocol.outputs])
        assert sf.info(item.path).format == "MP3"
    assert len(splits.notes) == 2 and _has_note(splits, "only 3 tag columns") \
        and _has_note(splits, "1 clips have none of the top-3 tags")


# ----------------------------------------------------------------------------- GTZAN

def _gtzan_fake(root: Path, audio_dir: str = "genres", lists_dir: Path | None = None) -> None:
    for name in ("blues/blues.00000.wav", "blues/blues.00001.wav", "classical/classical.00000.wav",
                 "rock/rock.00003.wav", "rock/rock.00004.wav"):
        _write_audio(root / audio_dir / name)
    (root / audio_dir / "jazz").mkdir()
    (root / audio_dir / "jazz" / "jazz.00054.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 4)  # corrupt
    (root / audio_dir / "blues" / ".DS_Store").write_bytes(b"\x00\x01")
    lists_dir = lists_dir or root
    lists_dir.mkdir(parents=True, exist_ok=True)
    (lists_dir / "train_filtered.txt").write_text("blues/blues.00000.wav\njazz/jazz.00054.wav\nblues/blues.00000.wav\n")
    (lists_dir / "valid_filtered.txt").write_bytes(b"classical/classical.00000.wav\r\nmetal/metal.00009.wav\r\n")
    (lists_dir / "test_filtered.txt").write_text("blues/blues.00001.wav\nrock/rock.00003.wav\n")


def test_gtzan_genre_reads_filtered_lists_and_reports_quirks(tmp_path):
    _gtzan_fake(tmp_path)
    task = get_task("gtzan")
    splits = task.load(tmp_path)
    assert task.protocol.outputs == gtzan.GENRES
    assert _keys(splits) == {"train": ["blues/blues.00000.wav"], "valid": ["classical/classical.00000.wav"],
                             "test": ["blues/blues.00001.wav", "rock/rock.00003.wav"]}
    targets = {item.key: item.target for item in splits.train + splits.valid + splits.test}
    assert targets == {"blues/blues.00000.wav": 0, "classical/classical.00000.wav": 1,
                       "blues/blues.00001.wav": 0, "rock/rock.00003.wav": 9}
    assert splits.test[1].path == tmp_path / "genres" / "rock" / "rock.00003.wav"
    assert _has_note(splits, "more than once", "blues/blues.00000.wav")
    assert _has_note(splits, "missing", "metal/metal.00009.wav")
    assert _has_note(splits, "unreadable", "jazz/jazz.00054.wav")
    assert _has_note(splits, "1 audio files", "in no split list", "rock/rock.00004.wav")
    assert not _has_note(splits, "DS_Store") and not _has_note(splits, "differ from the protocol")
    p = task.protocol
    assert (p.kind, p.metrics, p.window_seconds, p.plateau_patience, p.early_stop_patience) == \
        ("multiclass", ("accuracy",), None, 6, 20)


def test_gtzan_accepts_kaggle_folder_and_splits_dir(tmp_path):
    _gtzan_fake(tmp_path, audio_dir="genres_original", lists_dir=tmp_path / "dnn-mgr")
    with pytest.raises(DatasetError, match=r"train_filtered\.txt.*coreyker/dnn-mgr"):
        get_task("gtzan").load(tmp_path)
    splits = get_task("gtzan").load(tmp_path, splits_dir=str(tmp_path / "dnn-mgr"))
    assert splits.sizes() == {"train": 1, "valid": 1, "test": 2}
    assert splits.train[0].path == tmp_path / "genres_original" / "blues" / "blues.00000.wav"
    with pytest.raises(DatasetError, match="unknown option"):
        get_task("gtzan").load(tmp_path, annotations_dir="x")


def test_gtzan_size_note_only_for_published_lists(tmp_path, monkeypatch):
    _gtzan_fake(tmp_path)
    monkeypatch.setattr(gtzan, "PUBLISHED_LIST_SIZES", ({"train": 3, "valid": 2, "test": 2},))
    splits = get_task("gtzan").load(tmp_path)
    assert _has_note(splits, "{'train': 1, 'valid': 1, 'test': 2}", "'train': 443")


def test_gtzan_other_genre_names_become_the_classes(tmp_path):
    examples = [LayoutExample(f"x{i}", _audio(0.3, i), SR, split, label)
                for i, (split, label) in enumerate([("train", "sine"), ("train", "noise"), ("valid", "sine"),
                                                    ("test", "noise")])]
    gtzan.write_layout(tmp_path, examples)
    task = get_task("gtzan")
    splits = task.load(tmp_path)
    assert task.protocol.outputs == ("noise", "sine") and _has_note(splits, "not GTZAN's ten")
    assert {item.key: item.target for item in splits.train} == {"sine/sine.00000.wav": 1, "noise/noise.00000.wav": 0}


BEAT_JAMS = """{
 "annotations": [
  {"annotation_metadata": {"curator": {"name": "", "email": ""}, "annotator": {}, "version": "",
    "corpus": "GTZAN-Rhythm", "annotation_tools": "", "annotation_rules": "", "validation": "", "data_source": ""},
   "namespace": "beat",
   "data": [{"time": 0.1, "duration": 0.0, "value": 1, "confidence": 1}],
   "sandbox": {"annotation_type": "downbeat"}, "time": 0, "duration": 0.5},
  {"annotation_metadata": {"curator": {"name": "", "email": ""}, "annotator": {}, "version": "",
    "corpus": "GTZAN-Rhythm", "annotation_tools": "", "annotation_rules": "", "validation": "", "data_source": ""},
   "namespace": "beat",
   "data": [{"time": 0.35, "duration": 0.0, "value": 1, "confidence": 1},
            {"time": 0.1, "duration": 0.0, "value": 1, "confidence": 1},
            {"time": %s, "duration": 0.0, "value": 1, "confidence": 1}],
   "sandbox": {"annotation_type": "beat"}, "time": 0, "duration": 0.5},
  {"annotation_metadata": {}, "namespace": "tag_open",
   "data": [{"time": 0.0, "duration": 0.5, "value": "4/4", "confidence": 1}],
   "sandbox": {"meter": "4/4", "swing": "no"}, "time": 0, "duration": 0.5}
 ],
 "file_metadata": {"title": "", "artist": "", "release": "", "duration": 0.5, "identifiers": {},
                   "jams_version": "0.2.0"},
 "sandbox": {}
}"""
# JAMS 0.2's JamsFrame serialisation: a dict of columns.
COLUMN_JAMS = json.dumps({"annotations": [{"namespace": "beat", "sandbox": {"annotation_type": "beat"},
                                           "data": {"time": [0.2, 0.4], "duration": [0.0, 0.0],
                                                    "value": [1, 1], "confidence": [1, 1]}}],
                          "file_metadata": {"duration": 0.5}})


def _write_rhythm(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "blues.00000.wav.jams").write_text(BEAT_JAMS % "0.6")   # 0.6 s > the 0.5-s audio
    (folder / "classical.00000.wav.jams").write_text(BEAT_JAMS % "0.45")
    (folder / "blues.00001.wav.jams").write_text(COLUMN_JAMS)
    # rock.00003 has no JAMS file


@pytest.mark.parametrize("where", ["GTZAN-Rhythm_v2_ismir2015_lbd/jams", "GTZAN-Rhythm_v2_ismir2015_lbd", "jams",
                                   "option"])
def test_gtzan_beats_read_the_beat_annotation_of_each_jams(tmp_path, where):
    _gtzan_fake(tmp_path)
    folder = tmp_path / ("elsewhere" if where == "option" else where)
    _write_rhythm(folder)
    options = {"annotations_dir": str(folder)} if where == "option" else {}
    task = get_task("gtzan_beats")
    splits = task.load(tmp_path, **options)
    assert _keys(splits) == {"train": ["blues/blues.00000.wav"], "valid": ["classical/classical.00000.wav"],
                             "test": ["blues/blues.00001.wav"]}
    np.testing.assert_array_equal(splits.train[0].target, [0.1, 0.35, 0.6])   # sorted, downbeats ignored
    assert splits.train[0].target.dtype == np.float64
    np.testing.assert_array_equal(splits.valid[0].target, [0.1, 0.35, 0.45])
    np.testing.assert_array_equal(splits.test[0].target, [0.2, 0.4])
    assert _has_note(splits, "no beat annotation file", "rock/rock.00003.wav")
    assert _has_note(splits, "1 tracks have beats annotated past the end", "blues/blues.00000.wav")
    assert _has_note(splits, "unreadable", "jazz/jazz.00054.wav")
    p = task.protocol
    assert (p.kind, p.metrics, p.window_seconds, p.plateau_patience, p.early_stop_patience) == \
        ("beats", ("beat_f",), None, 6, 20)


def test_gtzan_beats_bad_or_absent_annotations(tmp_path):
    _gtzan_fake(tmp_path)
    with pytest.raises(DatasetError, match=r"anasynth\.ircam\.fr.*GTZAN-Rhythm_v2_ismir2015_lbd_2015-10-28"):
        get_task("gtzan_beats").load(tmp_path)
    folder = tmp_path / "jams"
    _write_rhythm(folder)
    (folder / "classical.00000.wav.jams").write_text('{"annotations": [')
    with pytest.raises(DatasetError, match="valid split is empty"):
        get_task("gtzan_beats").load(tmp_path)
    downbeats_only = json.loads(BEAT_JAMS % "0.3")
    downbeats_only["annotations"].pop(1)
    (folder / "classical.00000.wav.jams").write_text(json.dumps(downbeats_only))
    (folder / "rock.00003.wav.jams").write_text(COLUMN_JAMS)
    with pytest.raises(DatasetError, match="valid split is empty"):
        get_task("gtzan_beats").load(tmp_path)
    assert gtzan.read_jams_beats(folder / "rock.00003.wav.jams").tolist() == [0.2, 0.4]
    with pytest.raises(ValueError, match="sandbox.annotation_type 'beat'"):
        gtzan.read_jams_beats(folder / "classical.00000.wav.jams")


def test_gtzan_write_layout_round_trip_with_beats(tmp_path):
    plan = [("train", "blues"), ("train", "rock"), ("train", "blues"), ("valid", "jazz"), ("test", "rock")]
    examples = [LayoutExample(f"ex{i}", _audio(1.0, i), SR, split, genre,
                              {"beats": [0.9, 0.1 + 0.1 * i, 0.5], "downbeats": [0.1]} if i != 2 else {})
                for i, (split, genre) in enumerate(plan)]
    gtzan.write_layout(tmp_path, examples)
    assert (tmp_path / "train_filtered.txt").read_text() == \
        "blues/blues.00000.wav\nblues/blues.00001.wav\nrock/rock.00000.wav\n"
    genre_splits = get_task("gtzan").load(tmp_path)
    names = ["blues/blues.00000.wav", "rock/rock.00000.wav", "blues/blues.00001.wav", "jazz/jazz.00000.wav",
             "rock/rock.00001.wav"]
    for name, example in zip(names, examples):
        item = _by_key(genre_splits[example.split])[name]
        assert item.target == gtzan.GENRES.index(example.label)
        # written as 16-bit PCM: libsndfile scales by 32767 on writing and by 1/32768 on reading
        # (|x| / 32768 <= 2^-15 for |x| <= 1), plus half a step (2^-16) of rounding
        np.testing.assert_allclose(sf.read(item.path, dtype="float32")[0], example.audio, rtol=0,
                                   atol=2.0**-15 + 2.0**-16)
    beat_splits = get_task("gtzan_beats").load(tmp_path)
    assert _has_note(beat_splits, "no beat annotation file", "blues/blues.00001.wav")
    for i, (name, example) in enumerate(zip(names, examples)):
        if i != 2:
            item = _by_key(beat_splits[example.split])[name]
            np.testing.assert_allclose(item.target, sorted(example.extra["beats"]))
    document = json.loads((tmp_path / "GTZAN-Rhythm_v2_ismir2015_lbd/jams/jazz.00000.wav.jams").read_text())
    beat_annotations = [a for a in document["annotations"] if a["namespace"] == "beat"]
    assert [a["sandbox"]["annotation_type"] for a in beat_annotations] == ["beat", "downbeat"]
    assert beat_annotations[1]["data"] == [{"time": 0.1, "duration": 0.0, "value": 1, "confidence": 1}]
    assert document["file_metadata"]["duration"] == 1.0


# ----------------------------------------------------------------------------- EmoMusic

SONGS_INFO = (
    "song_id, file_name, Artist, Song title, start of the segment (min.sec), end of the segment (min.sec), "
    "Genre, Mediaeval 2013 set\n"
    "2, 2.mp3, Kevin MacLeod\t, Song A\t, 0.00, 0.45, Blues\t, development\n"
    "3, 3.mp3, Norah Jones\t, \"Song, B\"\t, 1.00, 1.45, Jazz\t, development\n"
    "5, 5.mp3, AC/DC\t, Song C\t, 0.30, 1.15, Rock\t, development\n"
    "7, 7.mp3, Björk\t, Song D\t, 0.00, 0.45, Pop\t, development\n"
    "8, 8.mp3, Jazz  Band 3\t, Song E\t, 0.00, 0.45, Jazz\t, development\n"
    "10, 10.mp3, Daft Punk\t, Song F\t, 0.00, 0.45, Electronic\t, evaluation\n"
    "12, 12.mp3, Queen\t, Song G\t, 0.00, 0.45, Rock\t, evaluation\n"
    "13, 13.mp3, Queen\t, Song H\t, 0.00, 0.45, Rock\t, evaluation\n"
    "14, 14.mp3, Portishead\t, Song I\t, 0.00, 0.45, Pop\t, development\n"
    "15, 15.mp3, Queen, Song J, 0.00, 0.45, Rock\n"
)
STATIC = (
    "song_id, mean_arousal, std_arousal, mean_valence, std_valence\n"
    "2, 3.1, 0.9, 5.0, 1.1\n3, 4.2, 1.0, 6.1, 0.8\n5, 7.5, 1.2, 4.4, 1.3\n7, 5.0, 0.7, 3.3, 0.9\n"
    "8, 2.2, 1.1, 6.6, 1.0\n10, 6.0, 0.8, 5.5, 1.2\n12, 4.4, 0.6, 2.9, 1.4\n14, 5.5, 1.0, 5.0, 1.0\n"
)


def _emo_fake(root: Path, metadata_dir: str = "") -> None:
    (root / metadata_dir).mkdir(parents=True, exist_ok=True)
    (root / metadata_dir / "songs_info.csv").write_text(SONGS_INFO, encoding="utf-8")
    (root / metadata_dir / "static_annotations.csv").write_text(STATIC, encoding="utf-8")
    for song_id in (2, 3, 5, 7, 8, 10, 12, 13):   # 14's clip is missing
        _write_audio(root / "clips_45seconds" / f"{song_id}.mp3", 0.2, "MP3")


@pytest.mark.parametrize("metadata_dir", ["", "annotations"])
def test_emo_splits_by_mediaeval_set_and_artist_hash(tmp_path, metadata_dir):
    _emo_fake(tmp_path, metadata_dir)
    task = get_task("emo")
    splits = task.load(tmp_path)
    # sha1 residues of the normalised artists: kevin macleod 9, norah jones 8 (valid); acdc 0, bjrk 1,
    # jazz band 3 (train); evaluation songs are test whatever their artist (daft punk is 9).
    assert _keys(splits) == {"train": ["5", "7", "8"], "valid": ["2", "3"], "test": ["10", "12"]}
    raw = {2: (3.1, 5.0), 3: (4.2, 6.1), 5: (7.5, 4.4), 7: (5.0, 3.3), 8: (2.2, 6.6), 10: (6.0, 5.5),
           12: (4.4, 2.9), 14: (5.5, 5.0)}
    development = np.array([raw[i] for i in (2, 3, 5, 7, 8, 14)])  # 14 counts although its clip is missing
    mean, std = development.mean(axis=0), development.std(axis=0)
    for item in splits.train + splits.valid + splits.test:
        assert item.target.dtype == np.float32 and item.target.shape == (2,)
        np.testing.assert_allclose(item.target, (np.array(raw[int(item.key)]) - mean) / std, rtol=2 * 2.0**-24)  # float64 stats, one float32 rounding
        assert item.path == tmp_path / "clips_45seconds" / f"{item.key}.mp3"
    assert _has_note(splits, "no row in static_annotations.csv", "13")
    assert _has_note(splits, "no clip", "14.mp3")
    assert _has_note(splits, "songs_info.csv are malformed", "line 11")   # 7 fields for 8 columns
    p = task.protocol
    assert (p.outputs, p.metrics, p.crop_seconds, p.window_seconds, p.plateau_patience, p.early_stop_patience) == \
        (("arousal", "valence"), ("r2", "r2_arousal", "r2_valence"), 30.0, 5.0, 5, 20)


def test_emo_artist_normalisation_follows_jukemir():
    assert emomusic.normalise_artist(" AC/DC\t") == "acdc"
    assert emomusic.normalise_artist("Björk") == "bjrk"
    assert emomusic.normalise_artist("Jazz  Band 3\t") == "jazz band"
    assert emomusic.artist_split("Kevin MacLeod") == "valid" and emomusic.artist_split("AC/DC") == "train"


def test_emo_missing_files_and_columns(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match=r"songs_info\.csv.*cvml\.unige\.ch"):
        get_task("emo").load(tmp_path)
    _emo_fake(tmp_path)
    (tmp_path / "static_annotations.csv").write_text("song_id, arousal\n2, 3.0\n")
    with pytest.raises(DatasetError, match=r"static_annotations\.csv: missing column\(s\) \['mean_arousal'"):
        get_task("emo").load(tmp_path)
    _emo_fake(tmp_path)
    monkeypatch.setattr(emomusic, "FULL_SONGS", 8)   # the fake's 8 annotated songs stand for 744
    assert _has_note(get_task("emo").load(tmp_path), "{'train': 3, 'valid': 2, 'test': 2}", "'train': 504")


def test_emo_write_layout_round_trip(tmp_path):
    plan = ["train", "train", "valid", "valid", "test", "train", "valid", "test"]
    examples = [LayoutExample(f"song {i}", _audio(0.3, i), SR, split, {"arousal": 1.0 + i, "valence": 9.0 - i * i / 8},
                              {"artist": "Same Artist"} if i < 4 else {})
                for i, split in enumerate(plan)]
    emomusic.write_layout(tmp_path, examples)
    splits = get_task("emo").load(tmp_path)
    assert _keys(splits) == {"train": ["1", "2", "6"], "valid": ["3", "4", "7"], "test": ["5", "8"]}
    raw = np.array([[e.label["arousal"], e.label["valence"]] for e in examples])
    development = raw[[i for i, split in enumerate(plan) if split != "test"]]
    items = _by_key(splits.train + splits.valid + splits.test)
    for i, example in enumerate(examples):
        expected = (raw[i] - development.mean(axis=0)) / development.std(axis=0)
        np.testing.assert_allclose(items[str(i + 1)].target, expected, rtol=2 * 2.0**-24)  # float64 stats, one float32 rounding
    assert splits.notes == []


def test_gtzan_write_layout_accepts_beats_as_label(tmp_path):
    # base.LayoutExample's convention for beat tasks: label = beat times, genre in extra.
    examples = [LayoutExample(f"b{i}", _audio(0.5, i), SR, split, np.array([0.4, 0.2]), {"genre": "pop"})
                for i, split in enumerate(["train", "valid", "test"])]
    gtzan.write_layout(tmp_path, examples)
    splits = get_task("gtzan_beats").load(tmp_path)
    assert _keys(splits) == {"train": ["pop/pop.00000.wav"], "valid": ["pop/pop.00001.wav"],
                             "test": ["pop/pop.00002.wav"]}
    np.testing.assert_array_equal(splits.valid[0].target, [0.2, 0.4])
    assert splits.notes == []
    with pytest.raises(ValueError, match="cannot be a folder name"):
        gtzan.write_layout(tmp_path, [LayoutExample("x", _audio(), SR, "train", "a/b")])
