"""The headers that mark a dead letter cut to fit its topic (``origin.truncated`` and the
original sizes): what a reader of the dead-letter topic goes by to know that what it
holds is not the whole record, and how big the whole was."""

from __future__ import annotations

import pytest

from service.contract.records import truncation_headers


def test_nothing_cut_means_no_marks() -> None:
    assert truncation_headers([], 10, 20, 30) == []


def test_the_marks_name_each_part_cut_once_in_order_and_every_original_size() -> None:
    assert truncation_headers(["value", "headers", "value"], 1000, 36, 0) == [
        ("origin.truncated", b"value,headers"),
        ("origin.value_bytes", b"1000"),
        ("origin.key_bytes", b"36"),
        ("origin.headers_bytes", b"0"),
    ]


@pytest.mark.parametrize(
    ("cut", "sizes"),
    [
        (["body"], (1, 2, 3)),  # not a part of a record that may be cut
        (["value"], (-1, 2, 3)),
        (["value"], (1, -2, 3)),
        (["value"], (1, 2, -3)),
    ],
)
def test_marks_a_record_cannot_have_are_refused(
    cut: list[str], sizes: tuple[int, int, int]
) -> None:
    with pytest.raises(ValueError) as caught:
        truncation_headers(cut, *sizes)
    assert str(caught.value) == f"invalid truncation marks: {cut} {sizes[0]} {sizes[1]}"
