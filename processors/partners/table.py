"""The partner registry topic materialised in memory (thread-safe).

``apply(key, value)`` per record of ``integrations.partners`` (``None``: a tombstone); the
lookups the API needs on every partner request (:meth:`PartnerTable.key`,
:meth:`PartnerTable.partner`) are dictionary reads.
"""

from __future__ import annotations

import logging
import re
import threading
from datetime import datetime
from typing import Final

from processors.errors import DecodeError
from processors.partners.keys import KEY_ID_PATTERN, KEY_PREFIX
from processors.partners.model import (
    PARTNER_ID_PATTERN,
    ApiKey,
    KeyUsage,
    Partner,
    RegistryEntry,
    decode_record,
)

__all__ = ["PartnerTable", "text_key"]

log = logging.getLogger(__name__)

_PARTNER_KEY: Final = re.compile(PARTNER_ID_PATTERN)
_KEY_KEY: Final = re.compile(rf"{re.escape(KEY_PREFIX)}({KEY_ID_PATTERN.strip('^$')})")
_USAGE_KEY: Final = re.compile(rf"{re.escape(KEY_PREFIX)}({KEY_ID_PATTERN.strip('^$')})\.last_used")


class PartnerTable:
    """Partners, their keys and the keys' last use, by id."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._partners: dict[str, Partner] = {}
        self._keys: dict[str, ApiKey] = {}
        self._usage: dict[str, KeyUsage] = {}
        self._keys_of: dict[str, set[str]] = {}
        self.skipped = 0
        """Records that could not be decoded (left out, counted, logged without content)."""

    def __len__(self) -> int:
        """The number of partners."""
        return len(self._partners)

    # -- lookups -----------------------------------------------------------------------------

    def partner(self, partner_id: str) -> Partner | None:
        return self._partners.get(partner_id)

    def partners(self) -> list[Partner]:
        """Every partner, by id."""
        with self._lock:
            return sorted(self._partners.values(), key=lambda p: p.id)

    def key(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def keys_of(self, partner_id: str) -> list[ApiKey]:
        """The keys of a partner (revoked and expired ones too), oldest first."""
        with self._lock:
            keys = [self._keys[k] for k in self._keys_of.get(partner_id, ()) if k in self._keys]
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    def last_used(self, key_id: str) -> datetime | None:
        usage = self._usage.get(key_id)
        return usage.last_used_at if usage is not None else None

    def get(self, key: str) -> RegistryEntry | None:
        """The entry of record key ``key`` (a partner, a key or a key's last use)."""
        if _PARTNER_KEY.fullmatch(key):
            return self._partners.get(key)
        if match := _KEY_KEY.fullmatch(key):
            return self._keys.get(match.group(1))
        if match := _USAGE_KEY.fullmatch(key):
            return self._usage.get(match.group(1))
        return None

    # -- changes -----------------------------------------------------------------------------

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """Apply one topic record; False when it was skipped (bad key or undecodable value).

        A tombstone deletes.  An undecodable value leaves the previous entry as it was.
        """
        record_key = text_key(key)
        if record_key is None or self._kind_of(record_key) is None:
            self._skip("a record with an invalid key", None)
            return False
        if value is None:
            self._remove(record_key)
            return True
        try:
            entry = decode_record(value)
        except DecodeError as exc:
            self._skip(exc.reason, record_key)
            return False
        if entry.record_key != record_key:
            self._skip("the record's id differs from its key", record_key)
            return False
        self.put(entry)
        return True

    def put(self, entry: RegistryEntry) -> None:
        """Set one entry directly."""
        with self._lock:
            if isinstance(entry, Partner):
                self._partners[entry.id] = entry
            elif isinstance(entry, ApiKey):
                old = self._keys.get(entry.id)
                if old is not None and old.partner_id != entry.partner_id:
                    self._keys_of.get(old.partner_id, set()).discard(entry.id)
                self._keys[entry.id] = entry
                self._keys_of.setdefault(entry.partner_id, set()).add(entry.id)
            else:
                self._usage[entry.id] = entry

    def _remove(self, record_key: str) -> None:
        with self._lock:
            kind = self._kind_of(record_key)
            if kind == "partner":
                self._partners.pop(record_key, None)
                return
            key_id = record_key[len(KEY_PREFIX) :].split(".", 1)[0]
            if kind == "usage":
                self._usage.pop(key_id, None)
                return
            old = self._keys.pop(key_id, None)
            if old is not None:
                self._keys_of.get(old.partner_id, set()).discard(key_id)

    @staticmethod
    def _kind_of(record_key: str) -> str | None:
        if _PARTNER_KEY.fullmatch(record_key):
            return "partner"
        if _KEY_KEY.fullmatch(record_key):
            return "key"
        if _USAGE_KEY.fullmatch(record_key):
            return "usage"
        return None

    def _skip(self, reason: str, record_key: str | None) -> None:
        self.skipped += 1
        log.warning(
            "partners: record for %s skipped (%s); %d skipped so far",
            record_key or "an unreadable key",
            reason,
            self.skipped,
        )


def text_key(key: bytes | None) -> str | None:
    """A compacted-table record key as text; None when absent or not ASCII (the record is refused)."""
    if key is None:
        return None
    try:
        return key.decode("ascii")
    except UnicodeDecodeError:
        return None
