"""E-MailRelay's SMTP client switches as relay-deliver options, for `tools.relay`.

`--client-smtp-config` (`-c`) is read as E-MailRelay 2.6.1 reads it (`read_smtp_config`): a comma
list of keywords, each on as `KEY`, `+KEY` or `with-KEY`, off as `-KEY`, `noKEY` or
`without-KEY`, its default as `=KEY`; an item left over is not an error but a warning,
`unknown smtp-config item [ITEM]` (relay says it at start). `eightbitstrict`,
`smtputf8strict`, `binarymimestrict`, `pipelining` and `linger` become relay-deliver's
`--eightbit-strict`, `--no-smtputf8-strict`, `--pipelining`, `--no-linger`, ... where they
differ from E-MailRelay's defaults (which are relay-deliver's). `--client-auth-config` goes to
relay-deliver as it is and needs `--client-auth`, as in E-MailRelay; `--prompt-timeout`
(`-w`) goes as it is. Pure: reads and writes nothing.
"""

from __future__ import annotations

from tools.relay_args import Given, UsageError, read_smtp_config

# keyword -> (relay-deliver's option, E-MailRelay 2.6.1's default for the client)
KEYWORDS = {
    "eightbitstrict": ("eightbit-strict", False),
    "smtputf8strict": ("smtputf8-strict", True),
    "binarymimestrict": ("binarymime-strict", True),
    "pipelining": ("pipelining", False),
    "linger": ("linger", True),
}


def _read(given: Given) -> tuple[dict[str, bool], list[str]]:
    """Each keyword's value, and the unknown items."""
    return read_smtp_config([given.value("client-smtp-config") or ""],
                            {key: default for key, (_option, default) in KEYWORDS.items()})


def client_options(given: Given) -> list[str]:
    """relay-deliver's options for --client-smtp-config, --client-auth-config and
    --prompt-timeout."""
    args: list[str] = []
    values, _unknown = _read(given)
    for key, on in values.items():
        option, default = KEYWORDS[key]
        if on != default:
            args.append(f"--{option}" if on else f"--no-{option}")
    for name in ("client-auth-config", "prompt-timeout"):
        if given.has(name):
            args += [f"--{name}", given.value(name) or ""]
    return args


def client_notes(given: Given) -> list[str]:
    """What `relay` says at start about these switches; UsageError for
    --client-auth-config without --client-auth."""
    if given.has("client-auth-config") and not given.has("client-auth"):
        raise UsageError("the --client-auth-config option requires --client-auth")
    _values, unknown = _read(given)
    return [f"--client-smtp-config: unknown smtp-config item [{item}]" for item in unknown]
