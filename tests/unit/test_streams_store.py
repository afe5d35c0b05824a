"""The changelog-backed store: a transaction's writes stay apart until committed."""

from __future__ import annotations

from processors.streams.store import ChangelogStore


def test_reads_see_pending_writes_and_commit_folds_them_in() -> None:
    store = ChangelogStore("changelog", 0)
    store.put("a", b"1")
    store.put("b", b"2")
    assert store.get("a") == b"1"
    assert len(store) == 0  # nothing committed yet
    store.commit()
    store.delete("a")
    assert store.get("a") is None
    assert dict(store.items()) == {"b": b"2"}
    assert list(store.changes()) == [("a", None)]
    store.commit()
    assert store.base == {"b": b"2"}


def test_abort_drops_the_transaction_and_keeps_what_was_committed() -> None:
    store = ChangelogStore("changelog", 0)
    store.put("a", b"1")
    store.commit()
    store.put("a", b"changed")
    store.put("new", b"x")
    store.abort()
    assert dict(store.items()) == {"a": b"1"}
    assert list(store.changes()) == []


def test_a_savepoint_undoes_one_record_and_keeps_the_earlier_ones() -> None:
    store = ChangelogStore("changelog", 0)
    store.put("kept", b"1")
    store.savepoint()
    store.put("kept", b"overwritten by the failing record")
    store.put("fresh", b"written by the failing record")
    store.rollback_to_savepoint()
    assert dict(store.items()) == {"kept": b"1"}
    store.commit()
    assert store.base == {"kept": b"1"}


def test_deleting_a_key_nobody_has_is_not_a_change() -> None:
    store = ChangelogStore("changelog", 0)
    store.delete("never")
    assert list(store.changes()) == []


def test_restored_entries_respect_the_key_filter_and_tombstones() -> None:
    store = ChangelogStore("changelog", 3, key_filter=lambda key: key.startswith("mine:"))
    store.apply("mine:a", b"1")
    store.apply("other:b", b"2")
    store.apply("mine:c", b"3")
    store.apply("mine:c", None)
    assert store.base == {"mine:a": b"1"}
