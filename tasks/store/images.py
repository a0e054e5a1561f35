"""Image bytes: how they are checked when sharded, decoded for the models, and what a bad one is.

Why one module: sharding checks every image once with a full decode and records
a status for the bad ones; the DINO cache and inference decode the same bytes
again (in threads, off the critical path) and must agree on what a failure is
called. Every status an error row can carry is listed in :data:`ERROR_STATUSES`.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageFile, UnidentifiedImageError

if TYPE_CHECKING:  # only for annotations: the shard worker processes import this module without pyarrow
    import pyarrow as pa

# ---------------------------------------------------------------- statuses
STATUS_OK = "ok"
STATUS_MISSING = "missing"  # listed by the layout, not found
STATUS_UNREADABLE = "unreadable"  # permission denied, FIFO, broken link, I/O error
STATUS_EMPTY = "empty"  # zero-byte file
STATUS_TOO_LARGE = "too_large"  # over max_file_bytes, bytes not stored
STATUS_NOT_IMAGE = "not_image"  # Pillow does not recognise the bytes
STATUS_TRUNCATED = "truncated"  # header fine, data ends early
STATUS_BOMB = "decompression_bomb"  # more pixels than the limit
STATUS_DECODE_ERROR = "decode_error"  # any other decoder failure (also: decodable at shard time, not later)
STATUS_MISSING_DINO = "missing_dino"  # ok at shard time, but no DINO attention was cached for it
ERROR_STATUSES = (
    STATUS_MISSING,
    STATUS_UNREADABLE,
    STATUS_EMPTY,
    STATUS_TOO_LARGE,
    STATUS_NOT_IMAGE,
    STATUS_TRUNCATED,
    STATUS_BOMB,
    STATUS_DECODE_ERROR,
    STATUS_MISSING_DINO,
)


# ---------------------------------------------------------------- checking bytes (sharding)
@dataclass(frozen=True)
class ImageCheck:
    """Outcome of opening and fully decoding one file's bytes."""

    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    mode: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK


def pixel_limit(max_image_pixels: int | None = None) -> int | None:
    """The decompression-bomb limit in force: the caller's, else Pillow's current one."""
    return Image.MAX_IMAGE_PIXELS if max_image_pixels is None else int(max_image_pixels)


def check_image(data: bytes, max_image_pixels: int | None = None) -> ImageCheck:
    """Open and decode ``data`` once with Pillow; never raises for bad bytes.

    ``max_image_pixels`` defaults to Pillow's own limit (``PIL.Image.MAX_IMAGE_PIXELS``,
    89,478,485 unless changed). Anything above it is an error row: Pillow itself
    only *warns* between one and two times its limit and raises above, and a
    pipeline must not decode a bomb just because the warning went to a log. A
    caller may pass a lower limit; Pillow still refuses images over twice its
    process-wide limit, and those rows say so too.
    """
    if not data:
        return ImageCheck(STATUS_EMPTY, "zero-byte file")
    limit = pixel_limit(max_image_pixels)
    width = height = fmt = mode = None
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            fmt, mode = im.format, im.mode
            if limit is not None and width * height > limit:
                return ImageCheck(
                    STATUS_BOMB,
                    f"{width}x{height} = {width * height} pixels exceeds the limit of {limit} (decompression-bomb protection)",
                    width,
                    height,
                    fmt,
                    mode,
                )
            if width < 1 or height < 1:
                return ImageCheck(STATUS_DECODE_ERROR, f"zero-size image {width}x{height}", width, height, fmt, mode)
            im.load()
    except Image.DecompressionBombError as e:
        return ImageCheck(STATUS_BOMB, f"DecompressionBombError: {e}", width, height, fmt, mode)
    except UnidentifiedImageError:
        return ImageCheck(STATUS_NOT_IMAGE, f"not a recognised image format (starts with {data[:16]!r})")
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow reports truncation as OSError("image file is truncated ...") or
        # "Truncated File Read"; other corruptions come as OSError/SyntaxError.
        kind = STATUS_TRUNCATED if "truncated" in str(e).lower() or isinstance(e, EOFError) else STATUS_DECODE_ERROR
        return ImageCheck(kind, f"{type(e).__name__}: {e}", width, height, fmt, mode)
    except Exception as e:  # a decoder bug must not stop the shard either
        return ImageCheck(STATUS_DECODE_ERROR, f"{type(e).__name__}: {e}", width, height, fmt, mode)
    return ImageCheck(STATUS_OK, None, width, height, fmt, mode)


# ---------------------------------------------------------------- reading and checking files (shard workers)
def read_local_file(path: str, check_regular: bool) -> tuple[bytes | None, str | None, str | None] | None:
    """The bytes of a local file with plain ``os`` calls: ``(bytes, None, None)`` or ``(None, status, error)``.

    The same outcomes and messages as reading through fsspec's local filesystem
    (which opens the file with the same ``open``): a missing file is ``missing``,
    any other ``OSError`` (permission, a folder, an I/O error) is ``unreadable``.
    ``check_regular`` first checks that the path (links followed) is a regular file,
    for entries whose listing did not say (a FIFO would block forever). ``None``
    for anything else (not an ``OSError``): the caller then reads it through
    fsspec, which retries and reports it as before.
    """
    try:
        if check_regular and not stat.S_ISREG(os.stat(path).st_mode):
            return None, STATUS_UNREADABLE, f"not a regular file: {path}"
        with open(path, "rb", buffering=0) as f:
            return f.readall(), None, None
    except FileNotFoundError:
        return None, STATUS_MISSING, f"file not found: {path}"
    except OSError as e:
        return None, STATUS_UNREADABLE, f"{type(e).__name__}: {e}"
    except Exception:  # noqa: BLE001  (e.g. a NUL byte in the name: let the fsspec path report it)
        return None


def check_bytes(data: bytes, max_file_bytes: int | None, max_image_pixels: int | None) -> dict[str, Any]:
    """The shard-row columns that come from one file's bytes: size, sha256, then the decode check.

    Bytes over ``max_file_bytes`` are hashed but not stored (``image`` stays unset).
    ``error`` is Pillow's message as is (the caller makes it valid UTF-8).
    """
    out: dict[str, Any] = {"n_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if max_file_bytes is not None and len(data) > max_file_bytes:
        out.update(status=STATUS_TOO_LARGE, error=f"{len(data)} bytes exceeds max_file_bytes={max_file_bytes}")
        return out
    check = check_image(data, max_image_pixels)
    out.update(
        image=data,
        status=check.status,
        error=check.error,
        width=check.width,
        height=check.height,
        format=check.format,
        mode=check.mode,
    )
    return out


def pil_settings() -> tuple[int | None, bool]:
    """This process's Pillow settings that change a check's outcome (passed on to shard workers)."""
    return Image.MAX_IMAGE_PIXELS, bool(ImageFile.LOAD_TRUNCATED_IMAGES)


def init_check_worker() -> None:
    """Initializer of a shard worker process: Ctrl-C is the parent's to handle (it stops the pool)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_files(
    files: list[tuple[str, bool]],
    max_file_bytes: int | None,
    max_image_pixels: int | None,
    settings: tuple[int | None, bool] | None = None,
) -> list[dict[str, Any] | tuple[str | None, str | None] | None]:
    """Read and check local files in a shard worker process, one result per ``(path, check_regular)``.

    A result is the columns of :func:`check_bytes` (the bytes included, as ``image``),
    ``(status, error)`` when the file could not be read, or ``None`` when the caller
    must read it itself (see :func:`read_local_file`). ``settings`` are the parent's
    :func:`pil_settings`, so a worker checks exactly as the parent would.

    Why here: worker processes import this module (``tasks.store.images``) and
    nothing of the pipeline above it: neither torch nor Prefect nor pyarrow.
    """
    if settings is not None:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = settings
    out: list[dict[str, Any] | tuple[str | None, str | None] | None] = []
    for path, check_regular in files:
        got = read_local_file(path, check_regular)
        if got is None:
            out.append(None)
        elif got[0] is None:
            out.append((got[1], got[2]))
        else:
            out.append(check_bytes(got[0], max_file_bytes, max_image_pixels))
    return out


# ---------------------------------------------------------------- decoding (models)
def decode(data: bytes) -> Image.Image:
    """Open and fully decode image bytes (the shard step already checked them once)."""
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def _decode_or_error(data: bytes | None, prepare: Callable[[Image.Image], Any] | None = None) -> Any:
    """Decode (and ``prepare``) one image in a worker thread.

    A decoding failure is returned as the exception (decodable at shard time but not
    now: the caller records it as an error row); a failure of ``prepare`` on a decoded
    image is a bug, not bad input, and raises in the caller.
    """
    if data is None:
        return ValueError("no image bytes stored for this row")
    try:
        img = decode(data)
    except Exception as exc:  # noqa: BLE001
        return exc
    return img if prepare is None else prepare(img)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def decode_pool() -> ThreadPoolExecutor:
    """The process's decode threads (shared by the DINO cache and inference)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="decode")
        return _POOL


class RowGroupImages:
    """The image bytes of a committed shard part, read one Parquet row group at a time.

    Why: a shard part holds ~1,000 images (~126 MB at ImageNet size). Read whole, through
    fsspec, it was held two to three times over while a worker decoded it (the file's
    bytes, Arrow's column, the Python objects), several hundred MB of every worker's peak.
    The DINO cache and inference read images in order, so one row group (128 rows, ~16 MB)
    at a time is all they hold. ``images[i]`` is row ``i``'s bytes (``None`` for rows
    without bytes); indices may go forwards only within a group's cache, any index works.
    """

    def __init__(self, storage, rel_path: str, column: str = "image") -> None:
        import pyarrow.parquet as pq

        self._file = storage.fs.open(storage.path(rel_path), "rb")
        try:
            self._pf = pq.ParquetFile(self._file)
        except Exception:
            self._file.close()
            raise
        md = self._pf.metadata
        self._starts = [0]
        for g in range(md.num_row_groups):
            self._starts.append(self._starts[-1] + md.row_group(g).num_rows)
        self._column = column
        self._group = -1
        self._values = None

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, i: int) -> bytes | None:
        import bisect

        if not 0 <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        g = bisect.bisect_right(self._starts, i) - 1
        if g != self._group:
            self._values = None  # the previous group goes before the next is read
            self._values = self._pf.read_row_group(g, columns=[self._column]).column(0)
            self._group = g
        values = self._values
        assert values is not None
        return values[i - self._starts[g]].as_py()

    def close(self) -> None:
        self._values = None
        self._file.close()

    def __enter__(self) -> RowGroupImages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_decoded(
    images: pa.ChunkedArray | RowGroupImages,
    indices: list[int],
    batch: int,
    prepare: Callable[[Image.Image], Any] | None = None,
) -> Iterator[list[tuple[int, Any]]]:
    """Decoded images of ``indices`` in batches: ``[(index, image or the exception)]``.

    Why threads and prefetch: JPEG decoding releases the GIL, so a pool decodes a
    batch in parallel while the model works on the previous one; on a GPU that
    keeps the device fed. Only two batches are ever held decoded, not the shard.
    ``prepare`` (e.g. ``ABSClassifier.prepare_image``: mode conversion, the tensor
    the model takes, pinned memory on CUDA) runs on each decoded image in the same
    worker task, so that per-image work stays off the critical path too.
    """
    chunks = [indices[s : s + batch] for s in range(0, len(indices), batch)]

    def blob(i: int) -> bytes | None:
        v = images[i]
        if v is None or isinstance(v, bytes):
            return v
        return bytes(v) if isinstance(v, bytearray) else v.as_py()

    def submit(chunk: list[int]) -> list[Future]:
        return [decode_pool().submit(_decode_or_error, blob(i), prepare) for i in chunk]

    pending = submit(chunks[0]) if chunks else []
    for k, chunk in enumerate(chunks):
        done = [f.result() for f in pending]
        pending = submit(chunks[k + 1]) if k + 1 < len(chunks) else []
        yield list(zip(chunk, done))
