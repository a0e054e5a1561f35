"""Miniature datasets in their real on-disk layouts, and the bad files sharding must survive.

Every builder writes through fsspec, so the same miniature can live in a
``tmp_path`` folder or on ``memory://``. Images are a few pixels, generated with
Pillow; index files use the real names and line formats of each benchmark.
"""

from __future__ import annotations

import io
import os
import posixpath
import struct
import zlib
from dataclasses import dataclass, field

import fsspec
from PIL import Image

# A few real class names of each benchmark, in their official spelling.
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "009.Brewer_Blackbird"]
PETS_BREEDS = ["Abyssinian", "american_bulldog", "american_pit_bull_terrier"]
DTD_CLASSES = ["banded", "blotchy", "braided"]
FOOD_CLASSES = ["apple_pie", "baby_back_ribs", "cup_cakes"]
PLACES_CATEGORIES = ["/a/airfield", "/a/arena/hockey", "/b/bus_interior"]


# ---------------------------------------------------------------------- images
def jpeg_bytes(seed: int = 0, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> bytes:
    """A tiny JPEG whose colour depends on ``seed`` (so files differ)."""
    color = ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)
    if mode == "L":
        color = color[0]
    elif mode == "CMYK":
        color = (*color, 0)
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "JPEG")
    return buf.getvalue()


def png_bytes(mode: str = "RGB", size: tuple[int, int] = (4, 4), **save_kwargs) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, "PNG", **save_kwargs)
    return buf.getvalue()


def noisy_jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    """A JPEG with enough entropy that cutting it in half truncates real scan data."""
    buf = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def png_header_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A 100-byte PNG that claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    idat = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 2)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------- writing
class Tree:
    """Writes files under a root URL (local path or ``memory://``)."""

    def __init__(self, root: str) -> None:
        self.root = str(root)
        self.fs, self.path = fsspec.core.url_to_fs(self.root)
        self.fs.makedirs(self.path, exist_ok=True)

    def put(self, rel: str, data: bytes | str) -> str:
        full = posixpath.join(self.path, rel)
        self.fs.makedirs(posixpath.dirname(full), exist_ok=True)
        self.fs.pipe_file(full, data.encode() if isinstance(data, str) else data)
        return rel

    def lines(self, rel: str, lines: list[str]) -> str:
        return self.put(rel, "".join(line + "\n" for line in lines))


@dataclass
class Mini:
    """A built miniature: where it is and what a layout must find there."""

    root: str
    classnames: list[str]
    # (relative path, label, image id) in the order the layout must return them
    expected: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [p for p, _, _ in self.expected]

    @property
    def labels(self) -> list[int]:
        return [lbl for _, lbl, _ in self.expected]

    @property
    def image_ids(self) -> list[str]:
        return [i for _, _, i in self.expected]


# ---------------------------------------------------------------------- layouts
def make_class_folders(root: str, folders: list[str], per_class: int = 2, *, label_of=None, stem: str = "img") -> Mini:
    """``root/<folder>/<stem>_<k>.jpg``; expected order is (label, path)."""
    t = Tree(root)
    label_of = label_of or {f: i for i, f in enumerate(sorted(folders))}.__getitem__
    expected = []
    n = 0
    for folder in folders:
        for k in range(per_class):
            rel = t.put(f"{folder}/{stem}_{k:04d}.JPEG", jpeg_bytes(n))
            n += 1
            expected.append((rel, label_of(folder), rel))
    expected.sort(key=lambda e: (e[1], e[0]))
    return Mini(root=root, classnames=[], expected=expected)


def make_cub(root: str, per_class: int = 4, classes: list[str] = CUB_CLASSES) -> dict[str, Mini]:
    """``CUB_200_2011/`` with its four index files; every other image is a test image.

    Returns the expected entries per split (``test``, ``train``, ``all``).
    """
    t = Tree(root)
    images, labels, split = [], [], []
    exp: dict[str, list[tuple[str, int, str]]] = {"test": [], "train": [], "all": []}
    iid = 0
    for cid, folder in enumerate(classes, start=1):
        species = folder.split(".", 1)[1]
        for k in range(per_class):
            iid += 1
            rel = f"{folder}/{species}_{k:04d}_{iid}.jpg"
            t.put(f"images/{rel}", jpeg_bytes(iid))
            is_train = k % 2
            images.append(f"{iid} {rel}")
            labels.append(f"{iid} {cid}")
            split.append(f"{iid} {is_train}")
            e = (f"images/{rel}", cid - 1, rel)
            exp["all"].append(e)
            exp["train" if is_train else "test"].append(e)
    t.lines("classes.txt", [f"{i} {c}" for i, c in enumerate(classes, start=1)])
    t.lines("images.txt", images)
    t.lines("image_class_labels.txt", labels)
    t.lines("train_test_split.txt", split)
    names = [c.split(".", 1)[1].replace("_", " ") for c in classes]
    return {k: Mini(root, names, v) for k, v in exp.items()}


def make_pets(root: str, per_class: int = 3) -> Mini:
    """``images/`` + ``annotations/test.txt`` and ``trainval.txt``.

    The last breed appears only in trainval.txt, so its name must come from there.
    """
    t = Tree(root)
    test, trainval, expected = [], [], []
    n = 0
    for cid, breed in enumerate(PETS_BREEDS, start=1):
        species = 1 if breed[0].isupper() else 2
        for k in range(1, per_class + 1):
            name = f"{breed}_{100 + k}"
            t.put(f"images/{name}.jpg", jpeg_bytes(n))
            n += 1
            line = f"{name} {cid} {species} {k}"
            if cid == len(PETS_BREEDS) or k == 1:
                trainval.append(line)
            else:
                test.append(line)
                expected.append((f"images/{name}.jpg", cid - 1, f"{name}.jpg"))
    t.lines("annotations/test.txt", test)
    t.lines("annotations/trainval.txt", trainval)
    t.lines("annotations/list.txt", ["#Image CLASS-ID SPECIES BREED ID", *test, *trainval])
    return Mini(root, [b.replace("_", " ") for b in PETS_BREEDS], expected)


def make_dtd(root: str, per_class: int = 3) -> dict[str, Mini]:
    t = Tree(root)
    test1, train1 = [], []
    for ci, cls in enumerate(DTD_CLASSES):
        for k in range(per_class):
            rel = f"{cls}/{cls}_{k + 1:04d}.jpg"
            t.put(f"images/{rel}", jpeg_bytes(ci * 10 + k))
            (test1 if k % 2 == 0 else train1).append(rel)
    t.lines("labels/test1.txt", test1)
    t.lines("labels/train1.txt", train1)
    label = {c: i for i, c in enumerate(DTD_CLASSES)}
    mk = lambda rels: [(f"images/{r}", label[r.split("/")[0]], r) for r in rels]  # noqa: E731
    return {"test1": Mini(root, list(DTD_CLASSES), mk(test1)), "train1": Mini(root, list(DTD_CLASSES), mk(train1))}


def make_food101(root: str, per_class: int = 3) -> Mini:
    t = Tree(root)
    test, train, expected = [], [], []
    for ci, cls in enumerate(FOOD_CLASSES):
        for k in range(per_class):
            item = f"{cls}/{1000 + ci * 100 + k}"
            t.put(f"images/{item}.jpg", jpeg_bytes(ci * 10 + k))
            if k == 0:
                train.append(item)
            else:
                test.append(item)
                expected.append((f"images/{item}.jpg", ci, f"{item}.jpg"))
    t.lines("meta/classes.txt", FOOD_CLASSES)
    t.lines("meta/labels.txt", [c.replace("_", " ").capitalize() for c in FOOD_CLASSES])
    t.lines("meta/test.txt", test)
    t.lines("meta/train.txt", train)
    return Mini(root, [c.replace("_", " ") for c in FOOD_CLASSES], expected)


def make_places365(root: str, per_class: int = 2, images_dir: str = "val_256", lists_dir: str = "") -> Mini:
    t = Tree(root)
    cats = [f"{c} {i}" for i, c in enumerate(PLACES_CATEGORIES)]
    vals, expected = [], []
    n = 0
    for label in [2, 0, 1] * per_class:  # the official list is not sorted by label
        n += 1
        name = f"Places365_val_{n:08d}.jpg"
        t.put(f"{images_dir}/{name}", jpeg_bytes(n))
        vals.append(f"{name} {label}")
        expected.append((f"{images_dir}/{name}", label, name))
    t.lines(posixpath.join(lists_dir, "categories_places365.txt"), cats)
    t.lines(posixpath.join(lists_dir, "places365_val.txt"), vals)
    return Mini(root, ["airfield", "arena (hockey)", "bus interior"], expected)


def make_manifest_images(root: str) -> list[tuple[str, int, str]]:
    """Images for a manifest: ``(path, label, class_name)`` rows, not sorted by label."""
    t = Tree(root)
    rows = []
    for n, (label, name) in enumerate([(1, "dog"), (0, "cat"), (1, "dog"), (2, "bird"), (0, "cat")]):
        rel = t.put(
            f"pics/{name}_{n}.png" if n % 2 else f"pics/{name}_{n}.jpg", png_bytes() if n % 2 else jpeg_bytes(n)
        )
        rows.append((rel, label, name))
    return rows


# ---------------------------------------------------------------------- bad files
def make_bad_folder(root: str) -> dict[str, str]:
    """A ``folder`` layout whose class ``mixed/`` holds every kind of bad input.

    Returns ``{image_id: expected status}`` for every file that must get a row.
    Local paths only (FIFOs and links are local things).
    """
    t = Tree(root)
    expect: dict[str, str] = {}

    def put(name: str, data: bytes, status: str) -> None:
        t.put(f"mixed/{name}", data)
        expect[f"mixed/{name}"] = status

    good = noisy_jpeg()
    put("good.jpg", good, "ok")
    put("truncated.jpg", good[: len(good) // 2], "truncated")
    put("empty.jpg", b"", "empty")
    put("text.jpg", b"hello, this is not a JPEG at all\n", "not_image")
    put("cmyk.jpg", jpeg_bytes(3, mode="CMYK"), "ok")
    put("gray16.png", png_bytes("I;16"), "ok")
    put("palette_transparent.png", png_bytes("P", transparency=0), "ok")
    put("gray.jpg", jpeg_bytes(4, mode="L"), "ok")
    put("bomb.png", png_header_bomb(), "decompression_bomb")
    put("tiny_1x1.png", png_bytes("RGB", (1, 1)), "ok")
    base = os.path.join(t.path, "mixed")
    os.symlink(os.path.join(base, "does-not-exist.jpg"), os.path.join(base, "broken_link.jpg"))
    expect["mixed/broken_link.jpg"] = "unreadable"
    os.mkfifo(os.path.join(base, "fifo.jpg"))
    expect["mixed/fifo.jpg"] = "unreadable"
    if os.geteuid() != 0:  # root reads through permission bits
        put("no_permission.jpg", jpeg_bytes(5), "unreadable")
        os.chmod(os.path.join(base, "no_permission.jpg"), 0)
    # Set aside (listed as ignored, never rows): OS droppings.
    t.put("mixed/.DS_Store", b"\x00\x00\x00\x01Bud1")
    # A second class so labels are exercised.
    for k in range(2):
        t.put(f"normal/ok_{k}.jpg", jpeg_bytes(10 + k))
        expect[f"normal/ok_{k}.jpg"] = "ok"
    return expect


# ---------------------------------------------------------------------- undecodable names
def put_bytes_name(folder: str, name: bytes, data: bytes) -> str:
    """Create ``folder/<name>`` whose file name is raw bytes (Linux allows any but ``/`` and NUL).

    Returns the name as Python lists it (undecodable bytes as lone surrogates).
    """
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(os.fsencode(folder), name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return os.fsdecode(name)
