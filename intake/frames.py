"""The frames between relay-intake and its storage process (pure: no I/O).

Request: a header `REQUEST` (op, request id, meta size, content size), then the meta
(the formatted envelope for store/prepare, the message id for commit), then the
content bytes. Reply: a header `REPLY` (request id, errno or 0, the number of the batch it
was handled in, text size), then the text (the message id, or the error's text).
"""

from __future__ import annotations

import struct

REQUEST = struct.Struct("!cIIQ")
REPLY = struct.Struct("!IiIH")
OP_STORE = b"S"  # write and commit a message
OP_PREPARE = b"P"  # write a message as .envelope.new only (filters run next)
OP_COMMIT = b"C"  # commit a prepared message
MAX_BATCH = 256  # most requests a batch takes before it is committed


def request_frame(op: bytes, request_id: int, meta: bytes, content_size: int) -> bytes:
    """The header and meta of a request (the content follows it)."""
    return REQUEST.pack(op, request_id, len(meta), content_size) + meta


def reply_frame(request_id: int, error_code: int, batch: int, text: str) -> bytes:
    """One reply: error_code 0 and the message id, or an errno and the error's text."""
    data = text.encode("utf-8", "replace")[:65535]
    return REPLY.pack(request_id, error_code, batch, len(data)) + data
