"""An SMTP path's address as the client wrote it: what relay-intake stores (pure).

aiosmtpd's `_getaddr` checks a path with the standard library's address grammar and
returns the address re-serialised by it: quotes it thinks unneeded dropped (`"ab"@x`
becomes `ab@x`), white space and comments around the local part taken out.
relay keeps the path as the client
wrote it, as E-MailRelay 2.6.1 stores it: `general_path` takes the text `_getaddr` consumed
(its argument less the parameters it returns) and from it what lies between `<` (or the
colon ending a source route) and the `>` that is not inside a quoted local part; for a path
without angle brackets, the first word.
"""

from __future__ import annotations


def path_as_written(text: str) -> str | None:
    """The address in a path as written (*text*: what a path parser consumed, maybe with
    white space around), E-MailRelay's way; None when no address can be found in it.

    `<@a,@b:"x y"@c>` -> `"x y"@c`: a source route is dropped, a `>` inside the quoted
    local part does not end the path, the quotes and everything else are kept as they are.
    """
    text = text.strip(" \t")
    if not text.startswith("<"):
        return text.split(None, 1)[0] if text else None
    start = 1
    if text.startswith("<@"):  # a source route ends at the first colon (RFC 5321 4.1.2)
        start = text.find(":") + 1
        if start == 0:
            return None
    end = -1
    if text.startswith('"', start):
        index = start + 1
        while index < len(text):
            if text[index] == "\\":
                index += 1
            elif text[index] == '"':
                end = text.find(">", index)
                break
            index += 1
    else:
        end = text.find(">", start)
    if end < 0:
        return None
    return text[start:end]
