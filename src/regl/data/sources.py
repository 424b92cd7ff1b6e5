"""Data sources for the prepare stage: Fashion-MNIST IDX files, ImageFolder trees, Parquet, Hugging Face.

Every source yields :class:`Split` objects that load images lazily, so prepare decodes only the images it
keeps (the public pool, the capped train split, the test split).
"""

from __future__ import annotations

import gzip
import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from regl.core.errors import ReglError
from regl.data.images import DECODE_ERRORS, undecodable

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SOURCE_FORMS = "fashion-mnist, imagefolder:<path>, parquet:<path>, hf:<dataset>[:<config>]"


@dataclass
class Split:
    """Labels and ids of a split, and a loader that opens image ``i`` as a PIL image on demand."""

    labels: np.ndarray
    ids: list[str]
    load: Callable[[int], Image.Image]

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class SourceData:
    name: str
    class_names: list[str]
    train: Split
    test: Split | None  # None: prepare carves a stratified test split out of train


def load_source(source: str, fashion_mnist_dir: str) -> SourceData:
    """Open the source named by ``prepare.source``."""
    kind, _, arg = source.partition(":")
    if source == "fashion-mnist":
        return load_fashion_mnist(Path(fashion_mnist_dir))
    if kind == "imagefolder" and arg:
        return load_imagefolder(Path(arg))
    if kind == "parquet" and arg:
        return load_parquet(Path(arg))
    if kind == "hf" and arg:
        return load_hf(arg)
    raise ReglError(f"params.yaml: prepare.source = {source!r}: unknown source; valid forms: {SOURCE_FORMS}")


# --- Fashion-MNIST ----------------------------------------------------------------------------------------


def _read_idx(folder: Path, stem: str) -> np.ndarray:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            raw = candidate.read_bytes()
            if candidate.suffix == ".gz":
                try:
                    raw = gzip.decompress(raw)
                except (OSError, EOFError) as exc:
                    raise ReglError(f"{candidate}: not a readable gzip file ({exc})") from None
            break
    else:
        raise ReglError(
            f"prepare.fashion_mnist_dir: {folder} has no {stem}[.gz]; install Debian's dataset-fashion-mnist "
            f"(apt-get install dataset-fashion-mnist, files in /usr/share/datasets/fashion-mnist) or put the four "
            f"IDX files from github.com/zalandoresearch/fashion-mnist in a folder and set prepare.fashion_mnist_dir"
        )
    if len(raw) < 8:
        raise ReglError(f"{candidate}: truncated IDX file")
    magic, count = struct.unpack(">II", raw[:8])
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):
        raise ReglError(f"{candidate}: not an IDX file of unsigned bytes (magic {magic:#x})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ReglError(f"{candidate}: expected {int(np.prod(dims))} bytes of data for shape {dims}, found {data.size}")
    return data.reshape(dims)


def _array_split(images: np.ndarray, labels: np.ndarray, prefix: str) -> Split:
    if len(images) != len(labels):
        raise ReglError(f"{prefix}: {len(images)} images but {len(labels)} labels")
    return Split(
        labels=labels.astype(np.int64),
        ids=[f"{prefix}/{i}" for i in range(len(labels))],
        load=lambda i: Image.fromarray(images[i]),
    )


def load_fashion_mnist(folder: Path) -> SourceData:
    f = FASHION_MNIST_FILES
    train = _array_split(_read_idx(folder, f["train_images"]), _read_idx(folder, f["train_labels"]),
                         "fashion-mnist/train")
    test = _array_split(_read_idx(folder, f["test_images"]), _read_idx(folder, f["test_labels"]), "fashion-mnist/test")
    for split in (train, test):
        if split.labels.size and split.labels.max() >= len(FASHION_MNIST_CLASSES):
            raise ReglError(f"{folder}: label {split.labels.max()} outside Fashion-MNIST's 10 classes")
    return SourceData("fashion-mnist", list(FASHION_MNIST_CLASSES), train, test)


# --- ImageFolder ------------------------------------------------------------------------------------------


def _open_checked(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except DECODE_ERRORS as exc:
        raise ReglError(f"{path}: {undecodable(exc)}") from None


def _scan_classes(root: Path) -> tuple[list[str], list[Path], list[int]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ReglError(f"{root}: an ImageFolder needs one sub-folder per class, found none")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise ReglError(f"{root / name}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files += found
        labels += [label] * len(found)
    return classes, files, labels


def _folder_split(root: Path, base: Path, files: list[Path], labels: list[int]) -> Split:
    return Split(
        labels=np.asarray(labels, dtype=np.int64),
        ids=[str(p.relative_to(base)) for p in files],
        load=lambda i: _open_checked(files[i]),
    )


def load_imagefolder(root: Path) -> SourceData:
    """``root/<class>/*.png``, or ``root/train/<class>/...`` and ``root/test/<class>/...``."""
    if not root.is_dir():
        raise ReglError(f"prepare.source: imagefolder {root} does not exist or is not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        classes, files, labels = _scan_classes(root / "train")
        test_classes, test_files, test_labels = _scan_classes(root / "test")
        if test_classes != classes:
            raise ReglError(f"{root}: train/ and test/ have different class folders ({classes} vs {test_classes})")
        return SourceData(
            f"imagefolder:{root}", classes,
            _folder_split(root, root, files, labels), _folder_split(root, root, test_files, test_labels),
        )
    classes, files, labels = _scan_classes(root)
    return SourceData(f"imagefolder:{root}", classes, _folder_split(root, root, files, labels), None)


# --- Parquet ----------------------------------------------------------------------------------------------


def _check_image_column(path: Path, kind) -> None:
    """``image`` must hold encoded images: plain binary, or the Hugging Face struct's ``bytes``."""
    import pyarrow as pa

    if pa.types.is_struct(kind):
        if kind.get_field_index("bytes") < 0:
            fields = [kind.field(i).name for i in range(kind.num_fields)]
            raise ReglError(f"{path}: column 'image' is a struct without 'bytes' (fields {fields}); expected the "
                            f"encoded image (PNG, JPEG...) in 'bytes', as the Hugging Face Image feature stores it")
        kind = kind.field("bytes").type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise ReglError(f"{path}: column 'image' holds {kind}; expected encoded image bytes (PNG, JPEG...) "
                        f"or the Hugging Face Image struct {{bytes, path}}")


class _RowGroupReader:
    """Image ``i`` of a Parquet file, read a row group at a time and the last one kept: prepare reads each cut
    in row order, so each row group is read once per cut and memory holds one."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        self.path, self.file = path, pq.ParquetFile(path)
        sizes = [self.file.metadata.row_group(g).num_rows for g in range(self.file.num_row_groups)]
        self.starts = np.cumsum([0] + sizes)
        self.group, self.blobs = -1, []

    def blob(self, i: int) -> bytes | None:
        import pyarrow as pa

        group = int(np.searchsorted(self.starts, i, side="right")) - 1
        if group != self.group:
            image = self.file.read_row_group(group, columns=["image"]).column("image").combine_chunks()
            self.group, self.blobs = group, None  # drop the old row group before the new one is decoded
            self.blobs = (image.field("bytes") if pa.types.is_struct(image.type) else image).to_pylist()
        return self.blobs[i - self.starts[group]]


def _parquet_labels(path: Path, table, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Integer class indices (or class-name strings) in ``label``; nulls and non-integers are named by row."""
    import pyarrow as pa

    column = table.column("label")
    if column.null_count:
        row = column.to_pylist().index(None)
        raise ReglError(f"{path}: row {row}: label is null; every image needs a class index or class name")
    kind = column.type
    raw_labels = column.to_pylist()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        class_names = class_names or sorted(set(raw_labels))
        index = {n: i for i, n in enumerate(class_names)}
        unknown = sorted(set(raw_labels) - set(index))
        if unknown:
            raise ReglError(f"{path}: labels {unknown[:5]} are not among the class names {class_names}")
        return np.asarray([index[x] for x in raw_labels], dtype=np.int64), class_names
    if not pa.types.is_integer(kind):
        example = next((f"; row {i}: {x!r}" for i, x in enumerate(raw_labels)), "")
        raise ReglError(f"{path}: column 'label' holds {kind}{example}; labels must be integer class indices "
                        f"0..K-1 or class-name strings (cast the column to int64)")
    labels = np.asarray(raw_labels, dtype=np.int64)
    class_names = class_names or [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if bad.size:
        raise ReglError(f"{path}: row {bad[0]}: label {labels[bad[0]]} outside 0..{len(class_names) - 1} "
                        f"(the {len(class_names)} class names)")
    return labels, class_names


def _parquet_split(path: Path, class_names: list[str] | None) -> tuple[Split, list[str]]:
    import json

    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        table = pq.read_table(path, columns=["label"]) if "label" in schema.names else None
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise ReglError(f"{path}: not a readable Parquet file ({exc})") from None
    for col in ("image", "label"):
        if col not in schema.names:
            raise ReglError(f"{path}: needs columns 'image' and 'label', has {schema.names}")
    if table.num_rows == 0:
        raise ReglError(f"{path}: holds no rows; a source needs images with labels")
    _check_image_column(path, schema.field("image").type)
    if class_names is None:
        meta = schema.metadata or {}
        try:
            if b"regl" in meta:
                class_names = json.loads(meta[b"regl"])["class_names"]
            elif b"huggingface" in meta:
                feats = json.loads(meta[b"huggingface"]).get("info", {}).get("features", {})
                class_names = feats.get("label", {}).get("names")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ReglError(f"{path}: its 'regl' or 'huggingface' metadata is not readable JSON with class "
                            f"names; remove it or rewrite the file") from None
        if class_names is not None and not (isinstance(class_names, list)
                                            and all(isinstance(n, str) for n in class_names)):
            raise ReglError(f"{path}: the class names in its metadata are not a list of strings")
    labels, class_names = _parquet_labels(path, table, class_names)
    reader = _RowGroupReader(path)

    def load(i: int) -> Image.Image:
        try:
            with Image.open(io.BytesIO(reader.blob(i))) as im:
                im.load()
                return im.copy()
        except DECODE_ERRORS as exc:
            raise ReglError(f"{path}: row {i}: {undecodable(exc)}") from None

    return Split(labels, [f"{path.name}/{i}" for i in range(len(labels))], load), class_names


def load_parquet(path: Path) -> SourceData:
    """A Parquet file (train only), or a folder with ``train.parquet`` and ``test.parquet``."""
    if path.is_dir():
        train_path, test_path = path / "train.parquet", path / "test.parquet"
        if not train_path.is_file():
            raise ReglError(f"prepare.source: {path} is a folder without train.parquet")
        train, names = _parquet_split(train_path, None)
        test = _parquet_split(test_path, names)[0] if test_path.is_file() else None
        return SourceData(f"parquet:{path}", names, train, test)
    if not path.is_file():
        raise ReglError(f"prepare.source: parquet file {path} does not exist")
    train, names = _parquet_split(path, None)
    return SourceData(f"parquet:{path}", names, train, None)


# --- Hugging Face datasets --------------------------------------------------------------------------------


def load_hf(spec: str) -> SourceData:
    """``hf:<name>[:<config>]`` through the ``datasets`` library (needs the hub or a local cache)."""
    import datasets

    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None)
    except Exception as exc:  # offline, unknown name, gated...
        raise ReglError(f"prepare.source = hf:{spec}: could not load the dataset ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if "train" not in ds:
        raise ReglError(f"prepare.source = hf:{spec}: the dataset has no 'train' split (has {list(ds)})")
    features = ds["train"].features
    image_col = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise ReglError(f"prepare.source = hf:{spec}: needs an Image and a ClassLabel column, has {dict(features)}")
    class_names = list(features[label_col].names)
    if len(ds["train"]) == 0:
        raise ReglError(f"prepare.source = hf:{spec}: the 'train' split holds no rows; a source needs images "
                        f"with labels")

    def split(split_name: str) -> Split:
        part = ds[split_name]

        def load(i: int) -> Image.Image:
            try:
                return part[i][image_col]  # datasets decodes the image here, with PIL
            except DECODE_ERRORS as exc:
                raise ReglError(f"prepare.source = hf:{spec}: '{split_name}' row {i}: {undecodable(exc)}") from None

        return Split(np.asarray(part[label_col], dtype=np.int64), [f"{name}/{i}" for i in range(len(part))], load)

    test = split("test") if "test" in ds else None
    return SourceData(f"hf:{spec}", class_names, split("train"), test)
