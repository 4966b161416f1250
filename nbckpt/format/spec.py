"""The checkpoint format nbckpt reads and writes: torch's zip format, byte by byte.

This docstring is the specification; ``container.py`` and the pickling package
implement it. "MUST" is what a reader relies on; "SHOULD" is what nbckpt writes
so that files are byte-compatible with ``torch.save`` (torch 1.6 to 2.14).

Archive
-------
A checkpoint is a ZIP archive. Every record name MUST start with one prefix
folder ``<p>/``. The writer uses the file's stem (``model.pt`` -> ``model``;
only the last extension is removed) for ASCII paths and ``archive`` for file
objects and non-ASCII paths. A reader MUST take the prefix from the first
central-directory entry and MUST look records up by name, never by position.

Records, in the order the writer SHOULD emit them::

    <p>/data.pkl                 the object pickle (protocol 2)
    <p>/.format_version          b"1"   (storage keys are "0", "1", ... in order)
    <p>/.storage_alignment       b"64"  (ASCII decimal)
    <p>/byteorder                b"little" or b"big"
    <p>/data/<key>               raw bytes of one storage, native byte order
    <p>/version                  b"3\\n"
    <p>/.data/serialization_id   40 ASCII digits (opaque; never validated)

Optional records (``.format_version``, ``.storage_alignment``, ``byteorder``)
MAY be missing in older files; ``version`` (or ``.data/version``) MUST exist and
hold an integer from 1 to 10. A record ``constants.pkl`` marks a TorchScript
archive, which is not a checkpoint.

Zip entries
-----------
All integers are little-endian. Every entry is STORED (method 0); a reader MAY
inflate DEFLATED entries (torch does), bounded by the declared size.

Local header, 30 bytes then name then extra::

    b"PK\\x03\\x04", version_needed=0 (u16), flags (u16), method=0 (u16),
    mtime=0 (u16), mdate=0 (u16), crc32=0 (u32), csize=0 (u32), usize=0 (u32),
    name_len (u16), extra_len (u16)

``flags`` is 0x0808 (data descriptor follows; UTF-8 name) for records with
data and 0x0800 for empty records, which have no data descriptor. CRC and
sizes in the local header are zero (the writer streams).

The data of every record starts at a multiple of the alignment (64): the
writer pads with an extra field of id 0x4246 (b"FB") filled with b"Z",
present even when the padding is 0. For a header at ``offset``::

    start = offset + 30 + len(name) + 4 (+ 4 + 16 if size >= 0xFFFFFFFF)
                                         (+ 8 if offset >= 0xFFFFFFFF)
    pad = (alignment - start % alignment) % alignment

A ZIP64 extra (id 0x0001) precedes the FB extra when the size or the offset
reaches 0xFFFFFFFF: (usize, 0) as two u64 when the size does, then (offset) as
u64 when the offset does.

Data descriptor (records with data): b"PK\\x07\\x08", crc32 (u32), then csize and
usize as u32, or as u64 (24 bytes in all) when the size or the header offset
reaches 0xFFFFFFFF.

Central directory entry::

    b"PK\\x01\\x02", made_by=0, needed=0, flags, method=0, mtime=0, mdate=0,
    crc32, csize, usize, name_len, extra_len, comment_len=0, disk=0,
    internal_attr=0, external_attr=0, header_offset (u32), name, extra

with csize/usize/header_offset set to 0xFFFFFFFF and moved to a ZIP64 extra
(usize, csize, offset: those that overflowed, in that order) when they reach it.

End of archive, always ZIP64 style: a ZIP64 end record (56 bytes:
b"PK\\x06\\x06", 44 (u64), made_by=0x031E, needed=45, disk=0, cd_disk=0,
entries (u64) twice, cd_size (u64), cd_offset (u64)), a ZIP64 locator (20 bytes:
b"PK\\x06\\x07", 0, eocd64_offset (u64), disks=1), then the classic end record
(22 bytes: b"PK\\x05\\x06", 0, 0, entries (u16) twice, cd_size (u32), cd_offset
(u32, 0xFFFFFFFF when it overflows), comment_len=0).

All offsets are relative to the first byte of the archive, which need not be
the first byte of the file: a reader MUST accept an archive that starts at the
stream's current position (after a header, or after other pickles) and MUST
find its end without assuming it is the end of the file.

data.pkl
--------
A pickle of protocol 2 (no FRAME), in which every storage is a persistent id::

    ("storage", <GLOBAL torch.<Name>Storage>, key: str, location: str, numel: int)

``numel`` counts elements of the storage class's dtype; for
``torch.storage.UntypedStorage`` it counts bytes. ``data/<key>`` MUST hold
exactly ``numel * itemsize`` bytes. ``location`` is ``cpu``, ``cuda``,
``cuda:N`` (or ``meta``, which has no record). An array is::

    torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
                                    requires_grad, OrderedDict()[, metadata])
    torch._utils._rebuild_tensor_v3(storage, offset, size, stride,
                                    requires_grad, OrderedDict(), dtype[, metadata])

with ``offset`` and ``stride`` in elements. ``_rebuild_tensor_v3`` is used for
the dtypes without a legacy storage class (uint16/32/64, float8, complex32, ...;
see ``dtypes.py``). A view MUST lie inside its storage:
``(offset + sum((size_i - 1) * stride_i) + 1) * itemsize <= nbytes`` for
non-empty views, with every size and stride >= 0.
"""

from __future__ import annotations

import struct

#: Record data alignment torch uses by default (``.storage_alignment``).
ALIGNMENT = 64
#: Zip format version torch writes in ``version`` and the range it reads.
FILE_FORMAT_VERSION = 3
MIN_READ_VERSION, MAX_READ_VERSION = 1, 10
#: Pickle protocol of ``data.pkl``.
PICKLE_PROTOCOL = 2

LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
CENTRAL_HEADER = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes
EOCD = struct.Struct("<4sHHHHIIH")  # 22 bytes
EOCD64 = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
EOCD64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes

LOCAL_MAGIC = b"PK\x03\x04"
CENTRAL_MAGIC = b"PK\x01\x02"
EOCD_MAGIC = b"PK\x05\x06"
EOCD64_MAGIC = b"PK\x06\x06"
EOCD64_LOCATOR_MAGIC = b"PK\x06\x07"
DESCRIPTOR_MAGIC = b"PK\x07\x08"

FLAG_DESCRIPTOR = 0x0008
FLAG_UTF8 = 0x0800
ZIP64_LIMIT = 0xFFFFFFFF
ZIP64_EXTRA_ID = 0x0001
PADDING_EXTRA_ID = 0x4246  # b"FB"
MADE_BY_ZIP64 = 0x031E
NEEDED_ZIP64 = 45

METHOD_STORED = 0
METHOD_DEFLATED = 8
