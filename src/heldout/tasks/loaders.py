"""A user's own multi-domain data: an image tree ``root/<domain>/<class>/<file>`` or a table.

Both tasks follow the multi-domain convention of :class:`heldout.tasks.domains.DomainSuite`
(``held_out``, per-domain splits, ``val@<domain>`` / ``test@<domain>``). Files are read on first
use, not when the task is built, and kept in memory per path; a file whose modification time
or size changed is read again.

References:
    Gulrajani, Lopez-Paz. In Search of Lost Domain Generalization. arXiv:2007.01434.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import numpy as np
import torch
import torch.nn.functional as F

from heldout.core.bounds import Annotated, Ge
from heldout.core.inputs import InputSpec
from heldout.registry import TASKS
from heldout.tasks.domains import DomainData, DomainSuite
from heldout.tasks.splitting import import_optional

__all__ = ["IMAGE_SUFFIXES", "TABLE_SUFFIXES", "ImageFolderDomains", "TableDomains"]

_NUMPY_SUFFIXES = (".npy",)
_PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_SUFFIXES = _NUMPY_SUFFIXES + _PILLOW_SUFFIXES  # accepted image files (case-insensitive)
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")  # accepted table files (case-insensitive)
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2, as Pillow's "L" conversion


def _visible(entries: Sequence[Path]) -> list[Path]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _sorted_names(values: Sequence[str]) -> list[str]:
    """Unique values, in numeric order when all are numbers, else in string order."""
    unique = set(values)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


# --------------------------------------------------------------------------------- image tree


@dataclass(frozen=True)
class _Tree:
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    files: tuple[tuple[tuple[str, int, int], int, int], ...]  # (file key, domain, class)


def _scan_tree(root_text: str) -> _Tree:
    """List ``root/<domain>/<class>/<file>``; check the layout; read no image."""
    if not root_text:
        raise ValueError("image_folder_domains needs root: the folder that holds "
                         "root/<domain>/<class>/<file> (set task.root=...)")
    root = Path(root_text).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image root {str(root)!r} does not exist or is not a folder; "
                                "expected root/<domain>/<class>/<file>")
    domains = [d for d in _visible(list(root.iterdir())) if d.is_dir()]
    if not domains:
        raise ValueError(f"image root {str(root)!r} has no domain folders; expected "
                         "root/<domain>/<class>/<file>")
    listing: list[tuple[Path, int, str]] = []
    class_names: set[str] = set()
    for d, domain in enumerate(domains):
        found = 0
        for class_dir in _visible(list(domain.iterdir())):
            if not class_dir.is_dir():
                raise ValueError(f"{str(class_dir)!r}: expected only class folders in domain "
                                 f"{domain.name!r} (root/<domain>/<class>/<file>)")
            for file in _visible(list(class_dir.iterdir())):
                if not file.is_file():
                    raise ValueError(f"{str(file)!r}: expected only image files in class "
                                     f"folder {str(class_dir)!r} (root/<domain>/<class>/<file>)")
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    raise ValueError(f"{str(file)!r}: unknown image file type; accepted: "
                                     f"{', '.join(IMAGE_SUFFIXES)}")
                listing.append((file, d, class_dir.name))
                class_names.add(class_dir.name)
                found += 1
        if not found:
            raise ValueError(f"domain {domain.name!r} under {str(root)!r} has no image files; "
                             "expected root/<domain>/<class>/<file> with files ending in "
                             f"{', '.join(IMAGE_SUFFIXES)}")
    classes = tuple(sorted(class_names))
    files = tuple((_file_key(file), d, classes.index(name)) for file, d, name in listing)
    return _Tree(tuple(d.name for d in domains), classes, files)


def _read_array(path: str) -> np.ndarray:
    """One image as ``(H, W, C)`` floats in ``[0, 1]``, ``C`` in 1 or 3 (alpha dropped)."""
    if path.lower().endswith(_NUMPY_SUFFIXES):
        array = np.load(path, allow_pickle=False)
        if array.dtype == np.uint8:
            array = array / 255.0
        elif array.dtype == np.uint16:
            array = array / 65535.0
        elif array.dtype.kind in "fb":
            array = array.astype(np.float64)
        else:
            raise ValueError(f"{path!r}: array of dtype {array.dtype}; accepted: uint8 (0-255), "
                             "uint16 (0-65535), float or bool (0-1)")
    else:
        try:
            image_module = import_optional("PIL.Image")
        except ImportError as error:
            raise ImportError(f"{path!r}: reading {Path(path).suffix} images needs Pillow "
                              "(pip install pillow), or save the images as .npy arrays") from error
        with image_module.open(path) as image:
            gray = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            array = np.asarray(image.convert("L" if gray else "RGB")) / 255.0
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(f"{path!r}: image array of shape {array.shape}; accepted: (H, W) or "
                         "(H, W, C) with C = 1, 3 or 4 (alpha, dropped)")
    return array[:, :, :3] if array.shape[2] == 4 else array


def _image_tensor(path: str, size: int, color: str) -> torch.Tensor:
    """One image as a ``(C, size, size)`` float tensor: colour converted, then resized."""
    array = _read_array(path)
    if color == "grayscale" and array.shape[2] == 3:
        array = (array @ _LUMA)[:, :, None]
    elif color == "rgb" and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float()[None]
    if image.shape[-2:] != (size, size):
        image = F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)
    return image[0]


@functools.lru_cache(maxsize=4)
def _load_tree(tree: _Tree, size: int, color: str) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Per domain: the flattened images and their class ids (cached by every file's key)."""
    out = []
    for d in range(len(tree.domains)):
        rows = [(key, c) for key, domain, c in tree.files if domain == d]
        x = torch.stack([_image_tensor(key[0], size, color).flatten() for key, _ in rows])
        y = torch.tensor([c for _, c in rows], dtype=torch.long)
        out.append((x, y))
    return tuple(out)


@TASKS.register(
    "image_folder_domains",
    summary="Your images in root/<domain>/<class>/<file> (.npy, or PNG/JPEG with Pillow).",
    references=("In Search of Lost Domain Generalization (arXiv:2007.01434)",),
)
@dataclass(frozen=True)
class ImageFolderDomains(DomainSuite):
    """Multi-domain image classification from a folder tree ``root/<domain>/<class>/<file>``.

    Domains are the sorted folder names under ``root``; classes the sorted union of the class
    folder names of every domain, numbered the same in every domain (a domain may lack some
    classes). Files: ``.npy`` arrays ``(H, W)`` or ``(H, W, C)`` (uint8 / 255, uint16 / 65535,
    float or bool as they are), and PNG, JPEG, BMP, GIF, TIFF or WebP images when Pillow is
    installed. Names starting with ``.`` are ignored. Each image is converted to grayscale (ITU-R
    601 luma) or RGB, resized to ``size x size`` (bilinear, antialiased) and flattened in
    ``(C, H, W)`` order to ``C * size * size`` features. The splits follow
    :class:`heldout.tasks.domains.DomainSuite`.

    Example:
        >>> task = ImageFolderDomains(root="my_images", size=16, color="rgb", held_out=(1,))
        >>> task.input.shape
        (768,)
        >>> # skipped: reads the user's folder "my_images"
        >>> task.splits(seed=0)  # doctest: +SKIP
    """

    root: str = ""  # the folder holding root/<domain>/<class>/<file>
    size: Annotated[int, Ge(1)] = 28  # images are resized to size x size
    color: Literal["grayscale", "rgb"] = "grayscale"  # one channel, or three

    domains_known_upfront: ClassVar[bool] = False  # known once the folder is listed

    def __post_init__(self) -> None:
        if self.color not in ("grayscale", "rgb"):
            raise ValueError(f"color must be 'grayscale' or 'rgb', got {self.color!r}")
        super().__post_init__()

    def domain_names(self) -> tuple[str, ...]:
        return _scan_tree(self.root).domains

    def class_names(self) -> tuple[str, ...]:
        """The class folder names; class id ``i`` is ``class_names()[i]``."""
        return _scan_tree(self.root).classes

    @property
    def input(self) -> InputSpec:
        channels = 1 if self.color == "grayscale" else 3
        return InputSpec("continuous", (channels * self.size * self.size,))

    @property
    def num_classes(self) -> int:
        return len(self.class_names())

    def _domains(self, seed: int) -> list[DomainData]:
        loaded = _load_tree(_scan_tree(self.root), self.size, self.color)
        return [DomainData(x, y, index=torch.arange(len(y))) for x, y in loaded]


# -------------------------------------------------------------------------------------- table


@functools.lru_cache(maxsize=4)
def _read_table(key: tuple[str, int, int]) -> dict[str, list[Any]]:
    """The columns of a CSV (every cell a string) or Parquet file (Python values)."""
    path = key[0]
    if path.lower().endswith(".csv"):
        with open(path, newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file, skipinitialspace=True))
        rows = [row for row in rows if row]  # blank lines
        if not rows:
            raise ValueError(f"{path!r} is empty; expected a header row of column names")
        header = [name.strip() for name in rows[0]]
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise ValueError(f"{path!r} row {line}: {len(row)} cells, but the header has "
                                 f"{len(header)} columns")
        columns = {name: [row[i].strip() for row in rows[1:]] for i, name in enumerate(header)}
    else:
        parquet = import_optional("pyarrow.parquet")
        table = parquet.read_table(path)
        header = list(table.column_names)
        columns = {name: table.column(name).to_pylist() for name in header}
    if len(columns) != len(header):
        raise ValueError(f"{path!r}: repeated column names in {header}")
    return columns


def _numbers(values: Sequence[Any]) -> np.ndarray | None:
    """The values as finite floats, or None if any is missing or not a number."""
    try:
        out = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out).all() else None


@dataclass(frozen=True)
class _Table:
    domains: tuple[str, ...]
    classes: tuple[str, ...]
    features: tuple[str, ...]
    x: torch.Tensor
    y: torch.Tensor
    domain: torch.Tensor


@functools.lru_cache(maxsize=4)
def _prepare_table(
    key: tuple[str, int, int], domain_column: str, label_column: str,
    feature_columns: tuple[str, ...] | None,
) -> _Table:
    columns = _read_table(key)
    available = ", ".join(columns)
    for role, name in (("domain_column", domain_column), ("label_column", label_column)):
        if name not in columns:
            raise ValueError(f"{role} {name!r} is not a column of {key[0]!r}; available "
                             f"columns: {available}")
    if domain_column == label_column:
        raise ValueError(f"domain_column and label_column are both {domain_column!r}")
    if feature_columns is None:
        features = tuple(name for name, values in columns.items()
                         if name not in (domain_column, label_column)
                         and _numbers(values) is not None)
        if not features:
            raise ValueError(f"{key[0]!r} has no numeric feature column besides "
                             f"{domain_column!r} and {label_column!r}; columns: {available}")
    else:
        features = feature_columns
        for name in features:
            if name not in columns:
                raise ValueError(f"feature column {name!r} is not a column of {key[0]!r}; "
                                 f"available columns: {available}")
            if name in (domain_column, label_column):
                raise ValueError(f"feature column {name!r} is the domain or label column")
            if _numbers(columns[name]) is None:
                bad = next(i for i, v in enumerate(columns[name]) if _numbers([v]) is None)
                raise ValueError(f"feature column {name!r} of {key[0]!r} is not numeric: data "
                                 f"row {bad + 1} holds {columns[name][bad]!r}")
    domain_values = [str(v) for v in columns[domain_column]]
    label_values = [str(v) for v in columns[label_column]]
    if not label_values:
        raise ValueError(f"{key[0]!r} has no data rows")
    domains, classes = tuple(_sorted_names(domain_values)), tuple(_sorted_names(label_values))
    # every feature column was checked numeric above
    x = np.stack([cast(np.ndarray, _numbers(columns[name])) for name in features], axis=1)
    return _Table(
        domains, classes, features, torch.tensor(x, dtype=torch.float32),
        torch.tensor([classes.index(v) for v in label_values], dtype=torch.long),
        torch.tensor([domains.index(v) for v in domain_values], dtype=torch.long),
    )


@TASKS.register(
    "table_domains",
    summary="Your table (CSV, or Parquet with pyarrow) with a domain column, a label column.",
    references=("In Search of Lost Domain Generalization (arXiv:2007.01434)",),
)
@dataclass(frozen=True)
class TableDomains(DomainSuite):
    """Multi-domain classification from a table with a domain column and a label column.

    A ``.csv`` file (header row, comma-separated; read with the ``csv`` module) or a
    ``.parquet`` / ``.pq`` file (needs pyarrow). Domains are the distinct values of
    ``domain_column``, classes those of ``label_column`` (string labels allowed), each sorted
    (numerically when all values are numbers) and numbered in that order. The features are
    ``feature_columns`` in that order, or by default every other column whose values are all
    finite numbers. The splits follow :class:`heldout.tasks.domains.DomainSuite`.

    Example:
        >>> task = TableDomains(path="patients.csv", domain_column="hospital",
        ...                     label_column="outcome", held_out=(0,))
        >>> # skipped: reads the user's table "patients.csv"
        >>> task.splits(seed=0)  # doctest: +SKIP
    """

    path: str = ""  # the table: .csv, or .parquet / .pq (with pyarrow)
    domain_column: str = "domain"  # the column naming each row's domain
    label_column: str = "label"  # the column of class labels (numbers or strings)
    feature_columns: tuple[str, ...] | None = None  # None: every other numeric column

    domains_known_upfront: ClassVar[bool] = False  # known once the file is read

    def __post_init__(self) -> None:
        if self.feature_columns is not None:
            object.__setattr__(self, "feature_columns", tuple(self.feature_columns))
            if not self.feature_columns:
                raise ValueError("feature_columns must name at least one column, or be None")
        super().__post_init__()

    def _table(self) -> _Table:
        if not self.path:
            raise ValueError("table_domains needs path: a .csv or .parquet file with a domain "
                             "column and a label column (set task.path=...)")
        path = Path(self.path).expanduser()
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(f"{str(path)!r}: unknown table file type; accepted: "
                             f"{', '.join(TABLE_SUFFIXES)}")
        if not path.is_file():
            raise FileNotFoundError(f"table file {str(path)!r} does not exist")
        return _prepare_table(_file_key(path), self.domain_column, self.label_column,
                              self.feature_columns)

    def domain_names(self) -> tuple[str, ...]:
        return self._table().domains

    def class_names(self) -> tuple[str, ...]:
        """The labels in class-id order: class id ``i`` is ``class_names()[i]``."""
        return self._table().classes

    def feature_names(self) -> tuple[str, ...]:
        """The feature columns, in feature order."""
        return self._table().features

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (len(self._table().features),))

    @property
    def num_classes(self) -> int:
        return len(self._table().classes)

    def _domains(self, seed: int) -> list[DomainData]:
        table = self._table()
        out = []
        for d in range(len(table.domains)):
            rows = torch.nonzero(table.domain == d).flatten()
            out.append(DomainData(table.x[rows], table.y[rows], index=rows))
        return out
