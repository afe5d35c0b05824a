"""asyncssh, imported with exactly one known third-party deprecation silenced.

cryptography 51 deprecated DSA, and asyncssh (through 2.24) imports its DSA classes when it is
imported (``asyncssh/crypto/dsa.py`` and ``asyncssh/crypto/misc.py``), which emits a
``CryptographyDeprecationWarning`` on every start of every process that uploads or serves
regulatory files.  Nothing here uses DSA keys.  The filter names that category, that message
and asyncssh's own crypto modules, so the same warning raised anywhere else still shows (and
fails the tests, where warnings are errors).  Import asyncssh from here, never directly.
"""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

warnings.filterwarnings(
    "ignore",
    message="DSA is deprecated",
    category=CryptographyDeprecationWarning,
    module=r"asyncssh\.crypto\.",
)

import asyncssh  # noqa: E402  (after the filter, on purpose)

__all__ = ["asyncssh"]
