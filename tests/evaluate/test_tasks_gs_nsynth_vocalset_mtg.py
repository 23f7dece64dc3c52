"""Loaders of GiantSteps key, NSynth, VocalSet and MTG-Jamendo against fake datasets in the
shipped layouts: metadata written by hand with the real headers, then write_layout round trips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mir_eval
import numpy as np
import pytest
import soundfile as sf
from sklearn.model_selection import GroupShuffleSplit

from musicssl.evaluate.tasks import DatasetError, LayoutExample, get_task
from musicssl.evaluate.tasks import giantsteps, mtg_jamendo, nsynth, vocalset
from musicssl.evaluate.tasks.giantsteps import KEYS
from musicssl.evaluate.tasks.vocalset import SINGERS, TECHNIQUES


def _tone(seconds: float, sample_rate: int) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _write(path: Path, seconds: float, sample_rate: int = 8000, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _tone(seconds, sample_rate), sample_rate, **kwargs)


def _by_key(items) -> dict:
    return {item.key: item for item in items}


def test_registry_protocols():
    expected = {  # name: (title, kind, outputs, metrics[0], window, plateau, early stop, max epochs)
        "gs": ("GS", "multiclass", 24, "key_score", None, 5, 20, 100),
        "nsynth_instrument": ("NSynthI", "multiclass", 11, "accuracy", None, 3, 10, 50),
        "nsynth_pitch": ("NSynthP", "multiclass", 128, "accuracy", None, 3, 10, 50),
        "vocalset_technique": ("VocalSetT", "multiclass", 10, "accuracy", None, 5, 10, 100),
        "vocalset_singer": ("VocalSetS", "multiclass", 20, "accuracy", None, 5, 20, 100),
        "mtg_instrument": ("MTG-Instr", "multilabel", 0, "roc_auc", 30.0, 3, 10, 100),
        "mtg_top50": ("MTG-Top50", "multilabel", 0, "roc_auc", 30.0, 3, 10, 100),
    }
    for name, (title, kind, outputs, monitor, window, plateau, early, epochs) in expected.items():
        p = get_task(name).protocol
        assert (p.name, p.title, p.kind, p.num_outputs, p.metrics[0], p.window_seconds) == (
            name, title, kind, outputs, monitor, window)
        assert (p.plateau_patience, p.early_stop_patience, p.max_epochs) == (plateau, early, epochs)
    assert get_task("gs").protocol.song_ensemble
    assert KEYS[:3] == ("C major", "Db major", "D major") and KEYS[12] == "C minor" and KEYS[-1] == "B minor"
    assert get_task("nsynth_pitch").protocol.outputs[60] == "60"
    assert get_task("vocalset_singer").protocol.outputs[:2] == ("f1", "f2")
    assert get_task("vocalset_singer").protocol.outputs[9] == "m1"


# ----------------------------------------------------------------------------- GiantSteps


def test_normalize_key_spellings():
    cases = {"d# minor": "Eb minor", "D# minor": "Eb minor", "Eb minor": "Eb minor", "F# major": "Gb major",
             "A# major": "Bb major", "c major": "C major", "-": None, "C minor / F# minor": None,
             "G minor/major": None, "A-A# minor": None, "E / B / A minor": None, "H minor": None}
    for text, key in cases.items():
        assert giantsteps.normalize_key(text) == key, text


def _slot(name: str) -> int:
    return int(hashlib.sha1(name.lower().encode("utf-8")).hexdigest(), 16) % 116


def _artists(count: int, valid: bool, prefix: str) -> list[str]:
    names = (f"{prefix} {i}" for i in range(10000))
    return [n for n in names if (_slot(n) >= 100) == valid][:count]


def test_artist_split_two_collaborator_passes():
    (valid,) = _artists(1, True, "Valid")
    b, c, d = _artists(3, False, "Solo")
    # Rows in reverse chain order: each pass moves "valid" one hop, and jukemir makes exactly two.
    split = giantsteps.artist_split([[c, d], [b, c], [valid, b]])
    assert split == {valid: "valid", b: "valid", c: "valid", d: "train"}
    assert giantsteps.artist_slot(valid) == _slot(valid) >= 100


def _gs_hand_layout(root: Path) -> None:
    (t1, t2, t3) = _artists(3, False, "Train Artist")
    (v1,) = _artists(1, True, "Valid Artist")
    mtg = root / "giantsteps-mtg-key-dataset-master"   # a GitHub zip's folder name
    (mtg / "annotations").mkdir(parents=True)
    (mtg / "annotations" / "annotations.txt").write_text(
        "ID\tMANUAL KEY\tC\n101\tD# minor\t2\n102\tA major\t2\n103\tC minor\t1\n104\tC minor / F# minor\t2\n"
        "105\t-\t0\n106\tF# major\t2\n107\tG major\t2\n108\tB minor\t2\n109\tE minor\t2\n110\tC major\t2\n",
        encoding="utf-8")
    (mtg / "annotations" / "beatport_metadata.txt").write_text(
        "ID\tARTIST\tSONG TITLE\tMIX\tLABEL\tBP GENRE\tBP BPM\tBP KEY\n"
        f"101\t{t1}\tOne\tOriginal Mix\tLbl\tTechno\t128\tD#min\n"
        f"102\t{v1}\tTwo\tOriginal Mix\tLbl\tHouse\t124\tAmaj\n"
        f"103\t{t1}\tThree\tOriginal Mix\tLbl\tTechno\t128\tCmin\n"
        f"104\t{t1}\tFour\tRemix\tLbl\tTechno\t128\tCmin\n"
        f"105\t{t1}\tFive\tOriginal Mix\tLbl\tTechno\t128\t\n"
        f"106\t{t2}, {v1}\tSix\tOriginal Mix\tLbl\tHouse\t122\tF#maj\n"   # a collaboration
        f"107\t{t1}\tSeven\tOriginal Mix\tLbl\tTechno\t128\tGmaj\n"
        f"108\t{t1}\tEight\tOriginal Mix\tLbl\tTechno\t128\tBmin\n"
        f"109\t{t3}\tNine\tOriginal Mix\tLbl\tTechno\t128\tEmin\n"
        f"110\t{t2}\tTen\tOriginal Mix\tLbl\tTechno\t128\tCmaj\n",
        encoding="utf-8")
    for track in (101, 102, 103, 104, 105, 106, 107, 109, 110):   # 108 has no md5: not a listed track
        (mtg / "md5").mkdir(exist_ok=True)
        (mtg / "md5" / f"{track}.LOFI.md5").write_text("0123456789abcdef0123456789abcdef")
    for track, seconds in {101: 65, 102: 31, 103: 31, 106: 40, 109: 20, 110: 30.5}.items():   # 107: no audio
        _write(mtg / "audio" / f"{track}.LOFI.mp3", seconds, format="MP3")
    key = root / "giantsteps-key-dataset"
    for track, text, seconds in ((201, "Eb minor", 95), (202, "A minor", 35), (203, None, 31)):
        (key / "md5").mkdir(parents=True, exist_ok=True)
        (key / "md5" / f"{track}.LOFI.md5").write_text("fedcba9876543210fedcba9876543210")
        _write(key / "audio" / f"{track}.LOFI.mp3", seconds, format="MP3")
        if text is not None:
            (key / "annotations" / "key").mkdir(parents=True, exist_ok=True)
            (key / "annotations" / "key" / f"{track}.LOFI.key").write_text(text)


def test_giantsteps_hand_written_layout(tmp_path):
    _gs_hand_layout(tmp_path)
    splits = get_task("gs").load(tmp_path)
    train, valid, test = (_by_key(splits[s]) for s in ("train", "valid", "test"))
    assert sorted(train) == ["101-0", "101-1"]
    assert [(train[k].offset, train[k].duration, train[k].group) for k in ("101-0", "101-1")] == [
        (0.0, 30.0, "101"), (30.0, 30.0, "101")]
    assert train["101-0"].target == KEYS.index("Eb minor") == 15
    # 106 is a collaboration with the valid artist; 110 is by that collaborator alone.
    assert {k: KEYS[v.target] for k, v in valid.items()} == {"102-0": "A major", "106-0": "Gb major",
                                                              "110-0": "C major"}
    assert {k: (KEYS[v.target], v.offset) for k, v in test.items()} == {
        "201-0": ("Eb minor", 0.0), "201-1": ("Eb minor", 30.0), "201-2": ("Eb minor", 60.0),
        "202-0": ("A minor", 0.0)}
    assert test["201-2"].path == tmp_path / "giantsteps-key-dataset" / "audio" / "201.LOFI.mp3"
    notes = " | ".join(splits.notes)
    assert "missing" in notes and "107" in notes                 # listed, no audio
    assert "shorter than one 30-s segment" in notes and "109" in notes
    assert "LOFI.key" in notes and "203" in notes                # test track without its key file
    assert "songs per split {'train': 1, 'valid': 3, 'test': 2}" in notes


def test_giantsteps_missing_annotations_names_file(tmp_path):
    _gs_hand_layout(tmp_path)
    (tmp_path / "giantsteps-mtg-key-dataset-master" / "annotations" / "annotations.txt").unlink()
    with pytest.raises(DatasetError, match=r"annotations\.txt.*giantsteps-mtg-key-dataset"):
        get_task("gs").load(tmp_path)
    with pytest.raises(DatasetError, match="giantsteps-mtg-key-dataset/ .*not found"):
        get_task("gs").load(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="segment_seconds"):
        get_task("gs").load(tmp_path, segment_seconds="zero")


def test_giantsteps_score_is_mean_mir_eval_weighted_score():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 24, size=60)
    outputs = rng.normal(size=(60, 24))
    outputs[:20, :] = 0
    outputs[np.arange(20), (targets[:20] + 7) % 12 + 12 * (targets[:20] // 12)] = 1   # fifth above
    expected = np.mean([mir_eval.key.weighted_score(KEYS[t], KEYS[int(np.argmax(o))])
                        for t, o in zip(targets, outputs)])
    score = get_task("gs").score(targets, outputs)
    assert set(score) == {"key_score"}
    assert score["key_score"] == pytest.approx(expected, abs=1e-12)
    one_fifth = np.zeros((1, 24))
    one_fifth[0, KEYS.index("G major")] = 1
    assert get_task("gs").score(np.array([KEYS.index("C major")]), one_fifth)["key_score"] == 0.5


def test_giantsteps_write_layout_round_trip(tmp_path):
    labels = [("train", "D# minor"), ("train", "C major"), ("train", "Bb major"), ("valid", "F# minor"),
              ("valid", "E major"), ("test", "Ab minor"), ("test", "G major")]
    examples = [LayoutExample(f"song {i}", _tone(2.5, 8000), 8000, split, key) for i, (split, key) in enumerate(labels)]
    giantsteps.write_layout(tmp_path, examples)
    splits = get_task("gs").load(tmp_path, segment_seconds="1")
    for index, (split, key) in enumerate(labels):
        items = [item for item in splits[split] if item.group == str(1000000 + index)]
        assert [(i.offset, i.duration) for i in items] == [(0.0, 1.0), (1.0, 1.0)]
        assert {KEYS[i.target] for i in items} == {giantsteps.normalize_key(key)}
    assert splits.sizes() == {"train": 6, "valid": 4, "test": 4}


# ----------------------------------------------------------------------------- NSynth


def _nsynth_entry(note_str: str, pitch: int, family: str, family_id: int, source: str, source_id: int) -> str:
    instrument = note_str.rsplit("-", 2)[0]
    return (f'"{note_str}": {{"qualities": [0, 1, 0, 0, 0, 0, 0, 0, 0, 0], "pitch": {pitch}, "note": 201034, '
            f'"instrument_source_str": "{source}", "velocity": 50, "instrument_str": "{instrument}", '
            f'"instrument": 417, "sample_rate": 16000, "qualities_str": ["dark"], "instrument_source": {source_id}, '
            f'"note_str": "{note_str}", "instrument_family": {family_id}, "instrument_family_str": "{family}"}}')


NSYNTH_NOTES = {  # split: (note_str, pitch, family, family id, source, source id, audio on disk)
    "train": [("bass_synthetic_033-022-050", 22, "bass", 0, "synthetic", 2, True),
              ("vocal_acoustic_000-127-100", 127, "vocal", 10, "acoustic", 0, True),
              ("guitar_acoustic_010-000-025", 0, "guitar", 3, "acoustic", 0, True),
              ("keyboard_electronic_001-060-075", 60, "keyboard", 4, "electronic", 1, False)],
    "valid": [("organ_electronic_007-064-127", 64, "organ", 6, "electronic", 1, True),
              ("flute_alien_001-070-100", 70, "alien", 11, "synthetic", 2, True)],
    "test": [("mallet_acoustic_062-100-050", 100, "mallet", 5, "acoustic", 0, True),
             ("synth_lead_synthetic_000-009-025", 9, "synth_lead", 9, "synthetic", 2, True)],
}


def _nsynth_hand_layout(root: Path) -> None:
    for split, notes in NSYNTH_NOTES.items():
        folder = root / f"nsynth-{split}"
        folder.mkdir(parents=True)
        entries = ",\n    ".join(_nsynth_entry(*note[:6]) for note in notes)
        (folder / "examples.json").write_text("{\n    " + entries + "\n}", encoding="utf-8")
        for note in notes:
            if note[-1]:
                _write(folder / "audio" / f"{note[0]}.wav", 0.05, 16000, subtype="PCM_16")


def test_nsynth_hand_written_layout(tmp_path):
    _nsynth_hand_layout(tmp_path)
    instrument = get_task("nsynth_instrument").load(tmp_path)
    assert [(i.key, i.target) for i in instrument.train] == [("nsynth-train/bass_synthetic_033-022-050", 0),
        ("nsynth-train/vocal_acoustic_000-127-100", 10), ("nsynth-train/guitar_acoustic_010-000-025", 3)]
    assert [(i.key, i.target) for i in instrument.valid] == [("nsynth-valid/organ_electronic_007-064-127", 6)]
    assert [(i.key, i.target) for i in instrument.test] == [
        ("nsynth-test/mallet_acoustic_062-100-050", 5), ("nsynth-test/synth_lead_synthetic_000-009-025", 9)]
    assert instrument.test[0].path == tmp_path / "nsynth-test" / "audio" / "mallet_acoustic_062-100-050.wav"
    assert instrument.test[0].duration is None and instrument.test[0].offset == 0.0
    notes = " | ".join(instrument.notes)
    assert "keyboard_electronic_001-060-075" in notes and "without audio" in notes
    assert "flute_alien_001-070-100" in notes and "instrument_family_str" in notes
    assert "differ from the protocol's {'train': 289205, 'valid': 12678, 'test': 4096}" in notes

    pitch = get_task("nsynth_pitch").load(tmp_path)
    assert [i.target for i in pitch.train] == [22, 127, 0]   # MIDI number itself: 0 stays valid
    assert [(i.path.stem, i.target) for i in pitch.valid] == [("organ_electronic_007-064-127", 64),
                                                              ("flute_alien_001-070-100", 70)]
    assert [i.target for i in pitch.test] == [100, 9]


def test_nsynth_missing_metadata_names_file(tmp_path):
    _nsynth_hand_layout(tmp_path)
    (tmp_path / "nsynth-valid" / "examples.json").unlink()
    with pytest.raises(DatasetError, match=r"nsynth-valid/examples\.json.*download\.magenta"):
        get_task("nsynth_pitch").load(tmp_path)


def test_nsynth_write_layout_round_trip(tmp_path):
    specs = [("train", "brass", 30), ("train", "reed", 0), ("valid", "string", 127), ("test", "vocal", 64)]
    examples = [LayoutExample(f"n{i}", _tone(0.1, 16000), 16000, split, family, {"pitch": pitch})
                for i, (split, family, pitch) in enumerate(specs)]
    examples.append(LayoutExample("by pitch", _tone(0.1, 16000), 16000, "test", 45))   # NSynthP-style label
    examples.append(LayoutExample("named", _tone(0.1, 16000), 16000, "test", "guitar",
                                  {"pitch": 50, "velocity": 25, "instrument": "guitar_acoustic_010"}))
    nsynth.write_layout(tmp_path, examples)
    instrument = get_task("nsynth_instrument").load(tmp_path)
    pitch = get_task("nsynth_pitch").load(tmp_path)
    families = {s: [nsynth.FAMILIES[i.target] for i in instrument[s]] for s in ("train", "valid", "test")}
    assert families == {"train": ["brass", "reed"], "valid": ["string"], "test": ["vocal", "keyboard", "guitar"]}
    assert {s: [i.target for i in pitch[s]] for s in ("train", "valid", "test")} == {
        "train": [30, 0], "valid": [127], "test": [64, 45, 50]}
    assert pitch.test[-1].key == "nsynth-test/guitar_acoustic_010-050-025"
    with pytest.raises(ValueError, match="written twice"):
        nsynth.write_layout(tmp_path / "again", [examples[-1], examples[-1]])
    note_str = instrument.train[0].path.stem
    entry = json.loads((tmp_path / "nsynth-train" / "examples.json").read_text())[note_str]
    assert entry["instrument_family"] == 1 and entry["note_str"] == note_str and entry["pitch"] == 30


def test_nsynth_note_in_two_splits_is_kept_and_reported(tmp_path):
    _nsynth_hand_layout(tmp_path)
    shared = "mallet_acoustic_062-100-050"
    valid = tmp_path / "nsynth-valid"
    text = (valid / "examples.json").read_text()
    entry = _nsynth_entry(shared, 100, "mallet", 5, "acoustic", 0)
    (valid / "examples.json").write_text(text[:-2] + ",\n    " + entry + "\n}")   # before the final "\n}"
    _write(valid / "audio" / f"{shared}.wav", 0.05, 16000, subtype="PCM_16")
    splits = get_task("nsynth_instrument").load(tmp_path)
    assert f"nsynth-valid/{shared}" in _by_key(splits.valid) and f"nsynth-test/{shared}" in _by_key(splits.test)
    assert any("listed in both valid and test" in note and shared in note for note in splits.notes)


# ----------------------------------------------------------------------------- VocalSet

VOCALSET_FILES = {  # path under FULL: seconds (at 1 kHz: tiny files, real chunk maths)
    "female1/arpeggios/belt/f1_arpeggios_belt_a.wav": 7.5,
    "female1/scales/vibrato/f1_scales_vibrato_a.wav": 3.0,
    "female1/scales/vibrato/f1_scales_vibrato_a(1).wav": 3.0,          # duplicate copy
    "female1/long_tones/fast_forte/f1_long_fast_forte.wav": 6.0,        # singer task only
    "female2/arpeggios/breathy/f2_arpeggios_breathy_e.wav": 4.0,        # technique test singer
    "female4/scales/straight/scales_straight_a.wav": 9.2,               # no singer prefix
    "male3/excerpts/spoken/m3_caro_spoken.wav": 3.5,                    # technique test singer
    "male11/arpeggios/lip_trill/m11_arpeggios_lip_trill_o.wav": 12.0,
    "male2/long_tones/inhaled/m2_long_inhaled.wav": 2.9,                # shorter than one chunk
    "male6/scales/trill/m6_scales_trill.wav": 5.0,
    "male7/scales/vocal_fry/m7_scales_vocal_fry.wav": 5.0,
    "female9/arpeggios/straight/f9_arpeggios_straight_i.wav": 5.0,
}


def _vocalset_hand_layout(root: Path) -> None:
    for relative, seconds in VOCALSET_FILES.items():
        _write(root / "FULL" / relative, seconds, 1000, subtype="PCM_16")
    for stray in ("female1/.DS_Store", "female1/arpeggios/belt/.DS_Store", ".DS_Store"):
        (root / "FULL" / stray).write_bytes(b"\0\0\0\1Bud1")


def _marble_split(groups: list[str], test_size: float) -> tuple[set[str], set[str]]:
    unique = sorted(set(groups))
    rest, held = next(GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=42617).split(
        unique, groups=unique))
    return {unique[i] for i in rest}, {unique[i] for i in held}


def _groups(splits) -> dict[str, set[str]]:
    return {s: {i.group for i in splits[s]} for s in ("train", "valid", "test")}


def test_vocalset_technique_hand_built_layout(tmp_path):
    _vocalset_hand_layout(tmp_path)
    splits = get_task("vocalset_technique").load(tmp_path)
    pool = ["female1/arpeggios/belt/f1_arpeggios_belt_a.wav", "female1/scales/vibrato/f1_scales_vibrato_a.wav",
            "female4/scales/straight/scales_straight_a.wav", "male11/arpeggios/lip_trill/m11_arpeggios_lip_trill_o.wav",
            "male6/scales/trill/m6_scales_trill.wav", "male7/scales/vocal_fry/m7_scales_vocal_fry.wav",
            "female9/arpeggios/straight/f9_arpeggios_straight_i.wav"]
    train, valid = _marble_split(pool, 0.4)
    assert len(valid) == 3 and len(train) == 4
    assert _groups(splits) == {"train": train, "valid": valid, "test": {
        "female2/arpeggios/breathy/f2_arpeggios_breathy_e.wav", "male3/excerpts/spoken/m3_caro_spoken.wav"}}
    items = _by_key(splits.train + splits.valid + splits.test)
    belt = "female1/arpeggios/belt/f1_arpeggios_belt_a.wav"
    assert [(items[f"{belt}#{k}"].offset, items[f"{belt}#{k}"].duration) for k in (0, 1)] == [(0.0, 3.0), (3.0, 3.0)]
    assert f"{belt}#2" not in items                                        # 7.5 s: the 1.5-s rest is dropped
    assert items[f"{belt}#0"].target == TECHNIQUES.index("belt") == 0
    assert items[f"{belt}#0"].path == tmp_path / "FULL" / belt
    straight = "female4/scales/straight/scales_straight_a.wav"
    assert [items[f"{straight}#{k}"].offset for k in range(3)] == [0.0, 3.0, 6.0]
    assert items["male3/excerpts/spoken/m3_caro_spoken.wav#0"].target == TECHNIQUES.index("spoken")
    assert not any("fast_forte" in key for key in items)
    notes = " | ".join(splits.notes)
    assert "without the singer prefix" in notes and "scales_straight_a.wav" in notes
    assert "duplicate" in notes and "f1_scales_vibrato_a(1).wav" in notes
    assert "shorter than one 3-s chunk" in notes and "m2_long_inhaled.wav" in notes
    assert "DS_Store" not in notes


def test_vocalset_singer_hand_built_layout(tmp_path):
    _vocalset_hand_layout(tmp_path)
    splits = get_task("vocalset_singer").load(tmp_path)
    recordings = [r for r in VOCALSET_FILES if "(1)" not in r and "m2_long" not in r]
    rest, test = _marble_split(recordings, 0.2)
    train, valid = _marble_split(sorted(rest), 0.4)
    assert (len(train), len(valid), len(test)) == (4, 4, 2)
    assert _groups(splits) == {"train": train, "valid": valid, "test": test}
    items = _by_key(splits.train + splits.valid + splits.test)
    assert items["female4/scales/straight/scales_straight_a.wav#2"].target == SINGERS.index("f4") == 3
    assert items["male11/arpeggios/lip_trill/m11_arpeggios_lip_trill_o.wav#3"].target == SINGERS.index("m11") == 19
    assert items["female1/long_tones/fast_forte/f1_long_fast_forte.wav#1"].target == 0


def test_vocalset_missing_full_folder(tmp_path):
    with pytest.raises(DatasetError, match="FULL.*zenodo.org/record/1203819"):
        get_task("vocalset_singer").load(tmp_path)


def test_vocalset_write_layout_round_trip(tmp_path):
    techniques = ["belt", "breathy", "vibrato", "straight", "trill", "spoken", "inhaled", "vocal_fry"]
    examples = [LayoutExample(f"take {i}", _tone(6.5, 1000), 1000, "test" if i < 3 else ("valid" if i % 2 else "train"),
                              technique) for i, technique in enumerate(techniques)]
    examples.append(LayoutExample("forte", _tone(3.2, 1000), 1000, "train", "m4", {"technique": "forte"}))
    vocalset.write_layout(tmp_path, examples)
    technique = get_task("vocalset_technique").load(tmp_path)
    assert sorted(TECHNIQUES[i.target] for i in technique.test if i.offset == 0) == ["belt", "breathy", "vibrato"]
    assert all(vocalset.singer_of_folder(Path(i.group).parts[0]) in vocalset.TEST_SINGERS for i in technique.test)
    rest = technique.train + technique.valid
    assert sorted(TECHNIQUES[i.target] for i in rest if i.offset == 0) == sorted(techniques[3:])
    assert all(i.duration == 3.0 for i in rest) and {i.offset for i in rest} == {0.0, 3.0}   # 6.5 s: two chunks
    singer = get_task("vocalset_singer").load(tmp_path)
    by_group = {i.group: SINGERS[i.target] for s in ("train", "valid", "test") for i in singer[s]}
    assert len(by_group) == 9 and by_group[next(g for g in by_group if "forte" in g)] == "m4"


# ----------------------------------------------------------------------------- MTG-Jamendo

GENRE_TSV = {
    "train": ("TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\r\n"
              "track_0000241\tartist_000005\talbum_000033\t41/241.mp3\t340.1\tgenre---rock\r\n"
              "track_0000242\tartist_000005\talbum_000033\t42/242.mp3\t200.0\tgenre---electronic\tgenre---rock\r\n"
              "track_0001332\tartist_000224\talbum_000204\t32/1332.mp3\t292.6\tgenre---pop\r\n"),
    "validation": ("TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\r\n"
                   "track_0917541\tartist_378901\talbum_108650\t41/917541.mp3\t241.2\tgenre---funk\tgenre---pop\r\n"),
    "test": ("TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\r\n"
             "track_0000773\tartist_000104\talbum_000126\t73/773.mp3\t275.3\tgenre---ambient\tgenre---rock\r\n"),
}


def _mtg_hand_layout(root: Path, splits_dir: str = "splits/split-0", audio: str = "audio-low",
                     suffix: str = ".low.mp3") -> None:
    (root / splits_dir).mkdir(parents=True)
    for name, text in GENRE_TSV.items():
        (root / splits_dir / f"autotagging_genre-{name}.tsv").write_bytes(text.encode("utf-8"))
    _write(root / "clip.mp3", 0.2, format="MP3")
    for relative in ("41/241", "42/242", "41/917541", "73/773"):   # 32/1332 is missing
        (root / audio / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / audio / f"{relative}{suffix}").write_bytes((root / "clip.mp3").read_bytes())


def test_mtg_hand_written_split_files(tmp_path):
    _mtg_hand_layout(tmp_path)
    task = get_task("mtg_genre")
    splits = task.load(tmp_path)
    tags = ("genre---rock", "genre---electronic", "genre---pop", "genre---funk", "genre---ambient")
    assert task.protocol.outputs == tags                    # union in order of appearance, train first
    assert type(task).protocol.outputs == () and task.protocol.window_seconds == 30.0
    assert [(i.key, i.target.tolist()) for i in splits.train] == [
        ("track_0000241", [1, 0, 0, 0, 0]), ("track_0000242", [1, 1, 0, 0, 0])]
    assert [(i.key, i.target.tolist()) for i in splits.valid] == [("track_0917541", [0, 0, 1, 1, 0])]
    assert [(i.key, i.target.tolist()) for i in splits.test] == [("track_0000773", [1, 0, 0, 0, 1])]
    assert splits.test[0].path == tmp_path / "audio-low" / "73" / "773.low.mp3"
    assert splits.test[0].target.dtype == np.float32 and splits.test[0].duration is None
    notes = " | ".join(splits.notes)
    assert "32/1332.mp3" in notes and "without audio" in notes
    assert "{'train': 14395, 'valid': 5466, 'test': 5115}" not in notes    # genre, not instrument, sizes
    assert "{'train': 32572, 'valid': 11043, 'test': 11479}" in notes


def test_mtg_repository_layout_and_plain_audio(tmp_path):
    _mtg_hand_layout(tmp_path, "mtg-jamendo-dataset/data/splits/split-0", "audio", ".mp3")
    splits = get_task("mtg_genre").load(tmp_path)
    assert splits.sizes() == {"train": 2, "valid": 1, "test": 1}
    assert splits.train[0].path == tmp_path / "audio" / "41" / "241.mp3"
    moved = tmp_path / "elsewhere" / "split-3"
    moved.parent.mkdir()
    (tmp_path / "mtg-jamendo-dataset" / "data" / "splits" / "split-0").rename(moved)
    other = get_task("mtg_genre").load(tmp_path, splits_dir="elsewhere/split-3", audio_dir=str(tmp_path / "audio"))
    assert other.sizes() == {"train": 2, "valid": 1, "test": 1}
    assert not any("protocol's" in note for note in other.notes)   # sizes are split-0's only


def test_mtg_split_files_where_the_repository_keeps_them(tmp_path):
    # The data root is a clone of github.com/MTG/mtg-jamendo-dataset: its split files sit in
    # data/splits/split-0 beside the repository's other files; the audio is downloaded into it.
    _mtg_hand_layout(tmp_path, "data/splits/split-0")
    (tmp_path / "data" / "autotagging_genre.tsv").write_bytes(GENRE_TSV["train"].encode())
    (tmp_path / "data" / "splits" / "split-1").mkdir()
    (tmp_path / "scripts" / "download").mkdir(parents=True)
    (tmp_path / "scripts" / "download" / "download.py").write_text("# the repository's download script\n")
    task = get_task("mtg_genre")
    splits = task.load(tmp_path)   # no splits_dir option
    assert splits.sizes() == {"train": 2, "valid": 1, "test": 1}
    assert splits.test[0].path == tmp_path / "audio-low" / "73" / "773.low.mp3"
    assert task.protocol.outputs[:2] == ("genre---rock", "genre---electronic")
    assert any("{'train': 32572" in note for note in splits.notes)   # split-0: the published sizes are checked


def test_mtg_errors_name_missing_files(tmp_path):
    _mtg_hand_layout(tmp_path)
    (tmp_path / "splits" / "split-0" / "autotagging_genre-validation.tsv").unlink()
    with pytest.raises(DatasetError, match=r"autotagging_genre-validation\.tsv.*MTG/mtg-jamendo-dataset"):
        get_task("mtg_genre").load(tmp_path)
    with pytest.raises(DatasetError, match="unknown option"):
        get_task("mtg_genre").load(tmp_path, audio="x")
    (tmp_path / "splits" / "split-0" / "autotagging_genre-validation.tsv").write_text(GENRE_TSV["validation"])
    (tmp_path / "splits" / "split-0" / "autotagging_genre-test.tsv").write_text("ID\tPATH\n")
    with pytest.raises(DatasetError, match=r"header .* is not"):
        get_task("mtg_genre").load(tmp_path, splits_dir=str(tmp_path / "splits" / "split-0"))
    looked = "split folder not found .*empty/data/splits/split-0.*mtg-jamendo-dataset/data/splits/split-0"
    with pytest.raises(DatasetError, match=looked):
        get_task("mtg_genre").load(tmp_path / "empty")
    (tmp_path / "empty" / "splits" / "split-0").mkdir(parents=True)
    with pytest.raises(DatasetError, match="audio folder not found"):
        get_task("mtg_genre").load(tmp_path / "empty")
    (tmp_path / "splits" / "split-0" / "autotagging_genre-test.tsv").write_text(GENRE_TSV["test"].split("\r\n")[0])
    with pytest.raises(DatasetError, match=r"no usable test tracks for task mtg_genre.*genre-test\.tsv lists none"):
        get_task("mtg_genre").load(tmp_path)


def test_mtg_write_layout_round_trip(tmp_path):
    specs = [("train", ("genre---rock", "instrument---guitar")), ("train", ("genre---pop", "mood/theme---happy")),
             ("valid", ("instrument---piano", "genre---rock", "mood/theme---calm")), ("test", ("mood/theme---sad",)),
             ("test", ("genre---pop", "instrument---guitar", "mood/theme---happy"))]
    examples = [LayoutExample(f"t{i}", _tone(0.3, 8000), 8000, split, tags) for i, (split, tags) in enumerate(specs)]
    mtg_jamendo.write_layout(tmp_path, examples)
    raw = (tmp_path / "splits" / "split-0" / "autotagging_top50tags-train.tsv").read_bytes()
    assert raw.startswith(b"TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\r\n") and b"01/1.mp3" in raw
    for name, prefix in (("mtg_genre", "genre---"), ("mtg_instrument", "instrument---"),
                         ("mtg_moodtheme", "mood/theme---"), ("mtg_top50", "")):
        task = get_task(name)
        splits = task.load(tmp_path)
        for index, (split, tags) in enumerate(specs):
            wanted = {t for t in tags if t.startswith(prefix)}
            found = [i for i in splits[split] if i.key == f"track_{index + 1:07d}"]
            assert len(found) == (1 if wanted else 0), (name, index)
            if found:
                assert {task.protocol.outputs[j] for j in np.flatnonzero(found[0].target)} == wanted
