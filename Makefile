# `make test` sets up .venv on first use (torch pinned to the CPU wheel) and runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-portability demo venv clean-venv bench fairseq-venv parity-convert parity-fairseq parity-bestrq \
	musicfm-src-set parity-mel parity-muq parity-muq-model parity-cqt parity-encodec mert-src-set parity-mert

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Two pytest workers of one thread each: much of the suite is process start-up, subprocesses and
# Python, which one worker leaves a core idle through (the suite is parallel-safe: tmp_path only).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --durations=15

# The numerics-sensitive tests again on torch's plain, unvectorised kernels: every CPU runs them
# and they sum in another order than the AVX2 / AVX-512 ones, so a tolerance that only held for
# one kernel's rounding fails here before a user's machine finds it.
PORTABLE_TESTS := tests/interop tests/test_audio.py tests/test_extract.py tests/targets tests/models \
	tests/evaluate/test_metrics.py tests/evaluate/test_beats.py
# (The base-size shapes are left to the first pass: the unvectorised kernels make them minutes long.)
test-portability: $(STAMP)
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -p no:cacheprovider -m "not slow" \
		$(PORTABLE_TESTS)
	ATEN_CPU_CAPABILITY=default OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -p no:cacheprovider tests/train \
		-k "resume or ddp or equals or exactly"

# The whole pipeline on generated music (about 15 min on 2 CPU cores); results in runs/demo/.
demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m musicssl.cli demo --out runs/demo

bench: $(STAMP)
	$(PY) benchmarks/backbone_speed.py

# fairseq-fixed, the reference of our parity checks, in its own venv: it does not install beside
# our dependencies. Its sdist needs torch at build time, so it is built without isolation in a
# venv that already holds the pinned CPU torch (pip would otherwise fetch a CUDA torch to build).
FAIRSEQ_VENV := .venv-fairseq
FAIRSEQ_STAMP := $(FAIRSEQ_VENV)/.installed

fairseq-venv: $(FAIRSEQ_STAMP)

$(FAIRSEQ_STAMP):
	test -x $(FAIRSEQ_VENV)/bin/python || $(PYTHON) -m venv $(FAIRSEQ_VENV)
	$(FAIRSEQ_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FAIRSEQ_VENV)/bin/python -m pip install --quiet torch==2.13.0 numpy cython setuptools wheel safetensors soundfile
	$(FAIRSEQ_VENV)/bin/python -m pip install --quiet --no-build-isolation fairseq-fixed==0.12.3.1
	touch $(FAIRSEQ_STAMP)

# `musicssl convert fairseq` against fairseq itself: random-weight HuBERT / data2vec-audio
# checkpoints at tiny and base shapes, every layer within 1e-4 (a few minutes on 2 cores).
parity-convert: $(STAMP) $(FAIRSEQ_STAMP)
	OMP_NUM_THREADS=2 $(FAIRSEQ_VENV)/bin/python benchmarks/fairseq_convert_parity.py --main-python $(PY)

# Objective parity with fairseq (MusicHuBERT vs HubertModel + hubert criterion, Music2Vec vs
# data2vec audio, span masks, LR/EMA schedules): prints each comparison's max difference and exits
# non-zero when one fails. PARITY_ARGS=--write-fixtures also rewrites the fairseq reference values
# that tests/models/test_fairseq_reference.py pins our side to; --skip-base leaves out the 95M cases.
PARITY_ARGS ?=
parity-fairseq: $(STAMP) $(FAIRSEQ_STAMP)
	OMP_NUM_THREADS=2 FAIRSEQ_VENV=$(FAIRSEQ_VENV) $(PY) benchmarks/fairseq_parity.py $(PARITY_ARGS)

# MERT against MERT's own code: MERTModel of the `mert_fairseq` user dir with fairseq's hubert
# criterion (loss_weights [10, 1]) vs our MERT on the same random weights, batch, mask, labels and
# in-batch mixture (logits, per-codebook losses, CQT targets and loss, total loss, gradients), and our
# mixture sampler vs MERT's draws in distribution (benchmarks/mert_parity.py; about a minute on 2
# cores, the 95M case included). MERT is on no package registry: MERT_SRC names a checkout of
# github.com/yizhilll/MERT; without it the target fails, saying so. It runs in .venv-fairseq with
# nnAudio added (MERT's CQT; its torchaudio import is stood in for, see benchmarks/mert_side.py).
# PARITY_ARGS=--write-fixtures rewrites tests/models/fixtures/mert_reference.safetensors.
MERT_STAMP := $(FAIRSEQ_VENV)/.mert-installed

$(MERT_STAMP): $(FAIRSEQ_STAMP)
	$(FAIRSEQ_VENV)/bin/python -m pip install --quiet nnAudio==0.3.4
	touch $(MERT_STAMP)

mert-src-set:
	@test -n "$(MERT_SRC)" || { echo "parity-mert: MERT_SRC is unset; make a checkout of https://github.com/yizhilll/MERT \
	(on no package registry; its mert_fairseq user dir is what runs) and run make parity-mert MERT_SRC=DIR" >&2; exit 1; }

parity-mert: mert-src-set $(STAMP) $(MERT_STAMP)
	OMP_NUM_THREADS=2 FAIRSEQ_VENV=$(FAIRSEQ_VENV) $(PY) benchmarks/mert_parity.py --mert-src $(MERT_SRC) $(PARITY_ARGS)

# BEST-RQ against MusicFM's own code (its RandomProjectionQuantizer and MusicFM25Hz.masking), run in
# its own venv (torch + einops). MusicFM is on no registry: MUSICFM_SRC names a checkout of
# github.com/minzwon/musicfm; without it the target fails, saying so. Seconds on 2 cores.
# PARITY_ARGS=--write-fixtures rewrites tests/models/fixtures/musicfm_reference.safetensors.
MUSICFM_VENV := .venv-musicfm
MUSICFM_STAMP := $(MUSICFM_VENV)/.installed

$(MUSICFM_STAMP):
	test -x $(MUSICFM_VENV)/bin/python || $(PYTHON) -m venv $(MUSICFM_VENV)
	$(MUSICFM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MUSICFM_VENV)/bin/python -m pip install --quiet torch==2.13.0 einops numpy
	touch $(MUSICFM_STAMP)

musicfm-src-set:
	@test -n "$(MUSICFM_SRC)" || { echo "parity-bestrq: MUSICFM_SRC is unset; clone https://github.com/minzwon/musicfm \
	(on no package registry) and run make parity-bestrq MUSICFM_SRC=DIR" >&2; exit 1; }

parity-bestrq: musicfm-src-set $(STAMP) $(MUSICFM_STAMP)
	OMP_NUM_THREADS=2 MUSICFM_VENV=$(MUSICFM_VENV) $(PY) benchmarks/bestrq_parity.py --musicfm-src $(MUSICFM_SRC) \
		$(PARITY_ARGS)

# The same comparisons with a real torchaudio beside MusicFM's code, which adds the whole target path
# from the waveform: MusicFM's MelSTFT (torchaudio MelSpectrogram + AmplitudeToDB) against our LogMel,
# and its tokens against ours. No torchaudio build on the registry loads beside our pinned torch
# 2.13, so this venv holds the newest pair that installs here: torch 2.9.1 (a CUDA build, run on the
# CPU; about 7 GB) and torchaudio 2.9. Seconds to run once installed.
TORCHAUDIO_VENV := .venv-torchaudio
TORCHAUDIO_STAMP := $(TORCHAUDIO_VENV)/.installed

$(TORCHAUDIO_STAMP):
	test -x $(TORCHAUDIO_VENV)/bin/python || $(PYTHON) -m venv $(TORCHAUDIO_VENV)
	$(TORCHAUDIO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TORCHAUDIO_VENV)/bin/python -m pip install --quiet torch==2.9.1 torchvision==0.24.1
	$(TORCHAUDIO_VENV)/bin/python -m pip install --quiet torch==2.9.1 "torchaudio==2.9.*" einops numpy
	touch $(TORCHAUDIO_STAMP)

parity-mel: musicfm-src-set $(STAMP) $(TORCHAUDIO_STAMP)
	OMP_NUM_THREADS=2 MUSICFM_VENV=$(TORCHAUDIO_VENV) $(PY) benchmarks/bestrq_parity.py --musicfm-src $(MUSICFM_SRC) \
		--require-torchaudio

# A reference venv whose reference package goes in without its dependencies (what would pull in a
# CUDA torchaudio or another torch): $(1) the folder, $(2) what it needs beside torch 2.13, $(3) the
# package itself. Its stamp is $(1)/.installed.
define no_deps_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet torch==2.13.0 $(2)
	$(1)/bin/python -m pip install --quiet --no-deps $(3)
	touch $(1)/.installed
endef

# The Mel-RVQ tokenizer against MuQ's own ResidualVectorQuantize (the `muq` package on PyPI, MIT),
# run in its own venv: torch, einops, numpy and muq without its dependencies (its __init__ pulls in
# transformers and torchaudio; only muq/modules/rvq.py is loaded). Weights of a seed, codes,
# losses, gradients, stale-code replacement. Seconds on 2 cores.
# PARITY_ARGS=--write-fixtures rewrites tests/targets/fixtures/muq_rvq.safetensors.
MUQ_VENV := .venv-muq
MUQ_STAMP := $(MUQ_VENV)/.installed

$(MUQ_STAMP):
	$(call no_deps_venv,$(MUQ_VENV),einops numpy,muq==0.1.0)

parity-muq: $(STAMP) $(MUQ_STAMP)
	OMP_NUM_THREADS=2 MUQ_VENV=$(MUQ_VENV) $(PY) benchmarks/muq_rvq_parity.py $(PARITY_ARGS)

clean-venv:
	rm -rf $(VENV)

# MuQ's own code (`MuQ.from_pretrained`) on a directory our exporter writes (every MusicFM / MuQ
# run's checkpoints): every hidden state against ours (benchmarks/muq_model_parity.py). MuQ pins no
# transformers version; its code fails on transformers 5 (the conformer returns no hidden_states),
# so its venv takes the last 4.x.
MUQ_MODEL_VENV := .venv-muqmodel
MUQ_MODEL_STAMP := $(MUQ_MODEL_VENV)/.installed

$(MUQ_MODEL_STAMP):
	$(call no_deps_venv,$(MUQ_MODEL_VENV),einops numpy easydict safetensors "transformers<5" "huggingface_hub<1",muq==0.1.0)

parity-muq-model: $(STAMP) $(MUQ_MODEL_STAMP)
	OMP_NUM_THREADS=2 MUQ_MODEL_VENV=$(MUQ_MODEL_VENV) $(PY) benchmarks/muq_model_parity.py

# MERT's CQT teacher against nnAudio's CQT1992v2 as MERT builds it (the `nnAudio` package on PyPI),
# run in its own venv (torch, nnAudio and its scipy; nnAudio imports no torchaudio): kernels and
# magnitudes equal bit for bit. Seconds on 2 cores. Our CQT needs no nnAudio (src/musicssl/models/cqt.py).
# PARITY_ARGS=--write-fixtures rewrites tests/models/fixtures/cqt_reference.safetensors.
NNAUDIO_VENV := .venv-nnaudio
NNAUDIO_STAMP := $(NNAUDIO_VENV)/.installed

$(NNAUDIO_STAMP):
	test -x $(NNAUDIO_VENV)/bin/python || $(PYTHON) -m venv $(NNAUDIO_VENV)
	$(NNAUDIO_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NNAUDIO_VENV)/bin/python -m pip install --quiet torch==2.13.0 numpy
	$(NNAUDIO_VENV)/bin/python -m pip install --quiet nnAudio==0.3.4
	touch $(NNAUDIO_STAMP)

parity-cqt: $(STAMP) $(NNAUDIO_STAMP)
	OMP_NUM_THREADS=2 NNAUDIO_VENV=$(NNAUDIO_VENV) $(PY) benchmarks/cqt_parity.py $(PARITY_ARGS)

# EnCodec 24 kHz codes (`labels rvq --codec encodec`) against the `encodec` package (PyPI, MIT) on random
# weights of a seed, saved in EnCodec's published .th format and read by our allow-list loader: latents
# and 6 kbps codes of three waveforms. Its venv holds torch, einops, numpy and encodec without its
# dependencies: torchaudio from the registry is a CUDA build that does not load beside the CPU torch, and
# the encoder never calls it (benchmarks/encodec_side.py stands an empty module in). Seconds on 2 cores.
# PARITY_ARGS=--write-fixtures rewrites tests/models/fixtures/encodec_reference.safetensors.
ENCODEC_VENV := .venv-encodec
ENCODEC_STAMP := $(ENCODEC_VENV)/.installed

$(ENCODEC_STAMP):
	$(call no_deps_venv,$(ENCODEC_VENV),einops numpy,encodec==0.1.1)

parity-encodec: $(STAMP) $(ENCODEC_STAMP)
	OMP_NUM_THREADS=2 ENCODEC_VENV=$(ENCODEC_VENV) $(PY) benchmarks/encodec_parity.py $(PARITY_ARGS)
