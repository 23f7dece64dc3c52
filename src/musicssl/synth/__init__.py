"""The synthetic music generator: songs with exact ground truth (songs.py), played by synthetic
instruments (instruments.py), drawn into the pre-training corpus and probe datasets of the CPU
demo and written in the real datasets' layouts (datasets.py: `synthesize`). It sits above
train and below demo in the import layers (pyproject.toml, [tool.importlinter]).
"""
