from processors.runtime.tracker import PartitionState


def test_commit_moves_only_past_contiguous_finished_offsets() -> None:
    state = PartitionState("t", 0)
    for offset in (10, 11, 12, 13):
        assert state.track(offset)
    state.finish(12)
    assert state.commit_due() is None
    state.finish(10)
    assert state.commit_due() == 11
    state.finish(11)
    assert state.commit_due() == 13
    assert state.unfinished == 1
    state.finish(13)
    assert state.commit_due() == 14
    assert state.unfinished == 0


def test_commit_due_reports_each_position_once() -> None:
    state = PartitionState("t", 0)
    state.track(0)
    state.finish(0)
    assert state.commit_due() == 1
    state.committed = 1
    assert state.commit_due() is None


def test_refetched_offsets_are_ignored() -> None:
    state = PartitionState("t", 0)
    assert state.track(5)
    assert not state.track(5)
    assert not state.track(4)
    state.finish(5)
    assert not state.track(5)
    assert state.track(6)


def test_idle_event_follows_running_count() -> None:
    state = PartitionState("t", 0)
    assert state.idle.is_set()
    state.started()
    state.started()
    state.stopped()
    assert not state.idle.is_set()
    state.stopped()
    assert state.idle.is_set()
