"""Fitted k-means centroids and what is done with them: `KMeansModel.assign(features)`, the
nearest centroid by squared Euclidean distance, ||x||^2 - 2 x.c + ||c||^2 in batched float32
torch matmuls (CPU or CUDA), ties to the lowest index; `save`/`load` write `centroids.npy` +
`kmeans.json` (no pickle anywhere). Fitting is in kmeans.py, whose docstring explains the
assignment's precision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

CENTROIDS_FILE = "centroids.npy"
RECORD_FILE = "kmeans.json"
FORMAT_NAME = "musicssl.kmeans"
FORMAT_VERSION = 1
_UNIT_ROUNDOFF_F32 = 2.0 ** -24


@dataclass(eq=False)
class KMeansModel:
    """Centroids (k, D) float32 and the record of how they were made."""

    centroids: np.ndarray
    record: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        centroids = np.asarray(self.centroids)
        if centroids.ndim != 2 or centroids.shape[0] < 1 or centroids.shape[1] < 1:
            raise ValueError(f"centroids must have shape (k, D) with k, D >= 1, got {centroids.shape}")
        if not np.all(np.isfinite(centroids)):
            raise ValueError("centroids contain NaN or Inf")
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def __repr__(self) -> str:
        return f"KMeansModel(k={self.k}, dim={self.dim}, library={self.record.get('library')!r})"

    # -- assignment ----------------------------------------------------------------------------

    def _tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        # Derived tensors per device; centroids are treated as read-only (replace, don't edit).
        key = (str(device), id(self.centroids))
        if key not in self._cache:
            c64 = self.centroids.astype(np.float64)
            shift64 = c64.mean(axis=0)
            centered64 = c64 - shift64
            shift32 = shift64.astype(np.float32)
            centered32 = self.centroids - shift32
            # Lowest index among exact duplicates of each centroid: ties between duplicate
            # centroids go to the lowest index whatever the rounding of the matmul.
            _, first, inverse = np.unique(self.centroids, axis=0, return_index=True, return_inverse=True)
            canonical = first[inverse.reshape(-1)].astype(np.int64)
            as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
            self._cache[key] = {
                "c32": as_t(centered32),
                "cnorm32": as_t((centered32.astype(np.float64) ** 2).sum(1).astype(np.float32)),
                "shift32": as_t(shift32),
                "c64": as_t(centered64),
                "cnorm64": as_t((centered64 ** 2).sum(1)),
                "shift64": as_t(shift64),
                "centroids32": as_t(self.centroids),
                "centroids64": as_t(c64),
                "canonical": as_t(canonical),
                "cmax": float(np.sqrt((centered64 ** 2).sum(1).max())),
            }
        return self._cache[key]

    def _assign_batch(self, x: torch.Tensor, t: dict, exact: bool, start: int) -> torch.Tensor:
        xc = x - t["shift32"]
        # ||c||^2 - 2 x.c : the per-row constant ||x||^2 does not change the argmin.
        dist = torch.addmm(t["cnorm32"], xc, t["c32"].T, beta=1.0, alpha=-2.0)
        best, index = dist.min(dim=1)  # first minimum on ties
        if not bool(torch.isfinite(best).all()):
            bad = int(start + torch.nonzero(~torch.isfinite(best))[0, 0])
            raise ValueError(f"features contain NaN or Inf (frame {bad})")
        if exact and self.k > 1:
            dist.scatter_(1, index[:, None], float("inf"))
            second = dist.min(dim=1).values
            # Bound on the float32 rounding error of a distance difference: inner products of
            # length D (error <= D u |x||c|), squared norms, the shift, the sums.
            radius = xc.norm(dim=1) + t["cmax"]
            tolerance = 2.0 * (self.dim + 2) * _UNIT_ROUNDOFF_F32 * radius * radius
            rows = torch.nonzero(second - best <= tolerance).squeeze(1)
            if rows.numel():
                x64 = x[rows].double() - t["shift64"]
                dist64 = torch.addmm(t["cnorm64"], x64, t["c64"].T, beta=1.0, alpha=-2.0)
                index[rows] = dist64.argmin(dim=1)
        return t["canonical"][index]

    def _batches(self, features, batch_frames: int, device):
        """Yield (start, stop, float32 tensor on device) over the flattened (N, D) frames."""
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        if isinstance(features, torch.Tensor):
            flat = features.detach()
            device = torch.device(device) if device is not None else flat.device
        else:
            flat = np.asarray(features)
            device = torch.device(device) if device is not None else torch.device("cpu")
        if flat.ndim not in (2, 3):
            raise ValueError(f"expected features of shape (T, D) or (B, T, D), got {tuple(flat.shape)}")
        if flat.shape[-1] != self.dim:
            raise ValueError(f"features have dim {flat.shape[-1]}, centroids have dim {self.dim}")
        lead = tuple(flat.shape[:-1])
        flat = flat.reshape(-1, self.dim)
        tensors = self._tensors(device)

        def batches():
            for start in range(0, flat.shape[0], batch_frames):
                stop = min(start + batch_frames, flat.shape[0])
                chunk = flat[start:stop]
                if isinstance(chunk, torch.Tensor):
                    x = chunk.to(device=device, dtype=torch.float32)
                else:
                    chunk = np.asarray(chunk, dtype=np.float32)
                    if not (chunk.flags.c_contiguous and chunk.flags.writeable):
                        chunk = np.array(chunk, dtype=np.float32, order="C")
                    x = torch.from_numpy(chunk).to(device)
                yield start, stop, x

        return lead, int(flat.shape[0]), tensors, batches()

    @torch.no_grad()
    def assign(self, features: np.ndarray | torch.Tensor, batch_frames: int = 65536,
               device: str | torch.device | None = None, *, exact: bool = False) -> np.ndarray:
        """Index of the nearest centroid (squared Euclidean) for each frame, int64.

        `features`: (T, D) or (B, T, D), numpy or torch (any float dtype; computed in float32).
        Returns (T,) or (B, T). Computed `batch_frames` frames at a time on `device` (default:
        the tensor's device, CPU for numpy). Ties go to the lowest index. `exact=True` recomputes
        in float64 the rows whose two best float32 distances are within rounding error, so the
        result equals a float64 brute force (costs one more pass over the distance matrix).
        """
        lead, total, tensors, batches = self._batches(features, batch_frames, device)
        out = torch.empty(total, dtype=torch.int64)
        for start, stop, x in batches:
            out[start:stop] = self._assign_batch(x, tensors, exact, start).cpu()
        return out.numpy().reshape(lead)

    @torch.no_grad()
    def inertia(self, features: np.ndarray | torch.Tensor, batch_frames: int = 65536,
                device: str | torch.device | None = None, *, exact: bool = False) -> float:
        """Mean squared distance of the frames to their nearest centroid (float64 sum)."""
        _, total, tensors, batches = self._batches(features, batch_frames, device)
        if total == 0:
            raise ValueError("no frames to compute inertia on")
        accumulated = 0.0
        for start, _, x in batches:
            index = self._assign_batch(x, tensors, exact, start)
            residual = x.double() - tensors["centroids64"][index]
            accumulated += float((residual * residual).sum())
        return accumulated / total

    # -- persistence ---------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write `directory/centroids.npy` and `directory/kmeans.json`; returns the directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / CENTROIDS_FILE, self.centroids, allow_pickle=False)
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "centroids_file": CENTROIDS_FILE,
            "centroids_shape": [self.k, self.dim],
            "centroids_dtype": "float32",
            "centroids_sha256": _sha256(self.centroids),
            "record": self.record,
        }
        text = json.dumps(header, indent=2, default=json_default, allow_nan=False)
        (directory / RECORD_FILE).write_text(text + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> KMeansModel:
        """Read a directory written by `save`, checking that both files agree."""
        directory = Path(directory)
        json_path, npy_path = directory / RECORD_FILE, directory / CENTROIDS_FILE
        if not json_path.is_file():
            raise FileNotFoundError(f"{json_path}: missing (expected a k-means directory written by KMeansModel.save)")
        try:
            header = json.loads(json_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{json_path}: not valid JSON ({error})") from error
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            raise ValueError(f"{json_path}: not a {FORMAT_NAME} file (format={header.get('format') if isinstance(header, dict) else None!r})")
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{json_path}: unsupported format_version {header.get('format_version')!r}")
        shape = header.get("centroids_shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s >= 1 for s in shape)):
            raise ValueError(f"{json_path}: bad centroids_shape {shape!r}")
        record = header.get("record")
        if not isinstance(record, dict):
            raise ValueError(f"{json_path}: missing 'record' object")
        for name, value in (("k", shape[0]), ("dim", shape[1])):
            if name in record and record[name] != value:
                raise ValueError(f"{json_path}: record {name}={record[name]} but centroids_shape is {shape}")
        if not npy_path.is_file():
            raise FileNotFoundError(f"{npy_path}: missing (listed in {json_path})")
        try:
            centroids = np.load(npy_path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(f"{npy_path}: cannot read as a .npy array without pickle ({error})") from error
        if centroids.dtype != np.float32:
            raise ValueError(f"{npy_path}: dtype {centroids.dtype}, expected float32")
        if list(centroids.shape) != shape:
            raise ValueError(f"{npy_path}: shape {list(centroids.shape)} does not match {json_path} centroids_shape {shape}")
        digest = header.get("centroids_sha256")
        if digest is not None and digest != _sha256(centroids):
            raise ValueError(f"{npy_path}: contents do not match the sha256 in {json_path} (file changed or corrupted)")
        if not np.all(np.isfinite(centroids)):
            raise ValueError(f"{npy_path}: centroids contain NaN or Inf")
        return cls(centroids, record)


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
