"""The frame queue keeps what identifies a dropped frame, in its place, so the part still gets an answer in order."""

from __future__ import annotations

from edge_agent.frame_queue import FrameQueue


def note(item: int) -> str:
    return f"dropped {item}"


def drain(q: FrameQueue[int, str]) -> list[int | str]:
    q.close()
    items: list[int | str] = []
    while (item := q.get(0.0)) is not None:
        items.append(item)
    return items


def test_a_full_live_queue_turns_its_oldest_frame_into_a_note_in_its_place() -> None:
    q: FrameQueue[int, str] = FrameQueue(2, drop_oldest=True, shrink=note)
    for i in range(1, 6):
        q.put(i)
    assert q.dropped == 3 and q.notes_lost == 0
    # The newest two frames are kept whole; the three before them are notes, in capture order, before them.
    assert drain(q) == ["dropped 1", "dropped 2", "dropped 3", 4, 5]


def test_notes_put_before_a_frame_keep_their_place_and_do_not_count_against_the_size() -> None:
    q: FrameQueue[int, str] = FrameQueue(2, drop_oldest=True, shrink=note)
    q.put(1)
    q.put(4, notes_before=["gap 2", "gap 3"])
    assert q.dropped == 0  # two frames in a queue of two: the notes take no frame's room
    q.put(5)
    assert q.dropped == 1
    assert drain(q) == ["dropped 1", "gap 2", "gap 3", 4, 5]


def test_notes_past_their_bound_are_counted_not_kept() -> None:
    q: FrameQueue[int, str] = FrameQueue(1, drop_oldest=True, shrink=note, max_notes=3)
    for i in range(1, 7):
        q.put(i)
    # Five frames dropped, but only the newest three notes are kept: the two oldest parts are counted as lost.
    assert (q.dropped, q.notes_lost) == (5, 2)
    assert drain(q) == ["dropped 3", "dropped 4", "dropped 5", 6]


def test_a_blocking_queue_waits_for_room_for_frames_only() -> None:
    q: FrameQueue[int, str] = FrameQueue(1, drop_oldest=False, shrink=note)
    q.put(1)
    assert q.get(0.0) == 1
    q.put(3, notes_before=["gap 2"])  # room for one frame, and any number of notes: no wait
    assert drain(q) == ["gap 2", 3] and q.dropped == 0
