"""The daemon <-> model worker channel: msgpack control messages and shared-memory tensors.

Control: one ``SOCK_SEQPACKET`` unix socket pair, one msgpack map per packet (at most
``MAX_MESSAGE`` bytes), file descriptors passed alongside with ``SCM_RIGHTS``. Nothing is
pickled either way: the worker runs a publisher's code, so what it sends back is as untrusted
as anything from the network, and the daemon checks every field (``TensorRef.checked``).

Tensors: each side owns one shared-memory region (a ``memfd`` mapped by both): the daemon
writes a batch's inputs into its region, the worker writes the outputs into its own. A region
that is too small is replaced by a larger one, whose descriptor travels with the message that
first uses it. A tensor in a message is a ``TensorRef``: dtype name, shape and byte offset.
"""

from __future__ import annotations

import array
import mmap
import os
import socket
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

from p2pagent.inference import dtypes
from p2pagent.inference.dtypes import DTypeInfo

#: Largest control message either side sends or accepts.
MAX_MESSAGE = 1 << 16
#: Most outputs one model may return.
MAX_OUTPUTS = 64
#: Tensor offsets in a region are multiples of this (cache lines; alignment for every dtype).
ALIGN = 64
#: Batches the daemon may hand the worker at once, each with its own input and output region:
#: the next one waits in the socket while one runs.
SLOTS = 2


class ChannelClosed(Exception):
    """The other side closed the channel (exited) or broke the protocol."""


def pack(message: dict[str, Any]) -> bytes:
    """A message as it travels (``send`` sends it; a side may keep and resend the bytes)."""
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = pack(message)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


#: Room for the descriptors one message may carry (``socket.recv_fds``' reckoning), and the
#: flags that say a message or its descriptors were cut, as plain ints: the socket module's
#: flag enums cost a Python call per operation, and this runs twice per batch.
_MAX_FDS = 4
_ANCILLARY_BYTES = socket.CMSG_LEN(_MAX_FDS * array.array("i").itemsize)
_TRUNCATED = int(socket.MSG_TRUNC) | int(socket.MSG_CTRUNC)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the descriptors sent with it; ChannelClosed at EOF or on garbage."""
    data, fds = receive_bytes(sock)
    return decode(data, fds), fds


def receive_bytes(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message's bytes, not decoded (a side that has seen the same bytes before may
    skip decoding them), and the descriptors sent with it; ChannelClosed at EOF or if it
    was cut. ``decode`` makes the message of them."""
    # ``socket.recv_fds`` without its wrapper: most messages carry no descriptor.
    data, ancillary, flags, _ = sock.recvmsg(MAX_MESSAGE + 1, _ANCILLARY_BYTES)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[: len(payload) - len(payload) % received.itemsize])
            fds.extend(received)
    if flags & _TRUNCATED or len(data) > MAX_MESSAGE:
        for fd in fds:
            os.close(fd)
        raise ChannelClosed(f"a control message over {MAX_MESSAGE} bytes (or too many fds)")
    if not data:
        for fd in fds:
            os.close(fd)
        raise ChannelClosed("the channel was closed")
    return data, fds


def decode(data: bytes, fds: list[int]) -> dict[str, Any]:
    """The message ``data`` holds; ChannelClosed (its descriptors closed) on garbage."""
    try:
        message = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=0)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        for fd in fds:
            os.close(fd)
        raise ChannelClosed(f"a control message that is not msgpack: {e}") from None
    if not isinstance(message, dict):
        for fd in fds:
            os.close(fd)
        raise ChannelClosed("a control message that is not a map")
    return message


def aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class Region:
    """A shared-memory region: a memfd and its mapping (read and write)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.map = mmap.mmap(fd, size)
        #: The output views an answer's references make, by that list (its identity and
        #: the list): see ``worker_tensors.read_outputs``. They go with the region.
        self.reads: dict[int, tuple[Any, list[Any]]] = {}

    @staticmethod
    def create(size: int, name: str) -> Region:
        """A new region of at least ``size`` bytes (rounded up to a power of two)."""
        size = max(1 << 20, 1 << max(0, size - 1).bit_length())
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            return Region(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def adopt(fd: int, size: int) -> Region:
        """Maps a region the other side made; checks its real size first."""
        actual = os.fstat(fd).st_size
        if size <= 0 or size > actual:
            os.close(fd)
            raise ChannelClosed(f"a shared region announced as {size} bytes is {actual}")
        return Region(fd, size)

    def close(self) -> None:
        self.reads.clear()  # the views first: a mapping still viewed cannot be closed
        try:
            self.map.close()
        except BufferError:  # a tensor still views it: the mapping goes with the last view
            pass
        os.close(self.fd)


@dataclass(frozen=True)
class TensorRef:
    """A tensor in a region: element type, shape and where its bytes start."""

    dtype: DTypeInfo
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n

    def pack(self) -> list[Any]:
        return [self.dtype.name, list(self.shape), self.offset]

    @staticmethod
    def checked(raw: Any, region_size: int, what: str) -> TensorRef:
        """Parses a packed ref from the other side; it must lie inside the region."""
        if not (isinstance(raw, list) and len(raw) == 3):
            raise ChannelClosed(f"{what}: a tensor reference that is not [dtype, shape, offset]")
        name, shape, offset = raw
        info = dtypes.BY_NAME.get(name) if isinstance(name, str) else None
        if info is None:
            raise ChannelClosed(f"{what}: unknown dtype {str(name)[:32]!r}")
        if not (isinstance(shape, list) and len(shape) <= 16):
            raise ChannelClosed(f"{what}: a shape that is not a list of at most 16 dimensions")
        if not all(isinstance(d, int) and 0 <= d < 1 << 48 for d in shape):
            raise ChannelClosed(f"{what}: a shape with a negative or huge dimension")
        if not (isinstance(offset, int) and offset >= 0 and offset % ALIGN == 0):
            raise ChannelClosed(f"{what}: a bad offset")
        ref = TensorRef(info, tuple(shape), offset)
        if offset + ref.nbytes > region_size:
            raise ChannelClosed(f"{what}: a tensor past the end of the shared region")
        return ref


def layout(specs: list[tuple[DTypeInfo, tuple[int, ...]]]) -> tuple[list[TensorRef], int]:
    """Places tensors one after another, aligned; returns the refs and the bytes needed."""
    refs: list[TensorRef] = []
    offset = 0
    for info, shape in specs:
        ref = TensorRef(info, shape, offset)
        refs.append(ref)
        offset += aligned(ref.nbytes)
    return refs, offset
