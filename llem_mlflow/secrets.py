"""Secret scrubbing: credentials never reach result.json, MLflow params or error messages.

Pure text processing, no imports from the package, so config, environment and tracking can all use it.
"""

from __future__ import annotations

import re

_URI_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#\s@]+@")
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][^=&;#\s]*(?:token|password|passwd|pwd|key|secret|signature|credential)[^=&;#\s]*=)"
    r"[^&;#\s]*",
    re.IGNORECASE,
)


def scrub_secrets(text: str) -> str:
    """``text`` with URI credentials (``user:password@``) and secret-looking query values removed.

    ``https://u:p@host/x?token=abc&run=1`` becomes ``https://host/x?token=***&run=1``.
    """
    text = _URI_USERINFO.sub(r"\g<scheme>", text)
    return _SECRET_PARAM.sub(r"\g<name>***", text)
