"""ProcKey.image_id: one identity per program image, the same from any reader of the same values."""
from __future__ import annotations

from userspace.types import ProcKey

KEY = ProcKey("4b7c1a7e-1111-2222-3333-444455556666", 4242, 74164)
ARG_START, END_CODE = 140726454315744, 94537992121769  # stat fields 48 and 27 of a real `cat`


def test_same_values_same_id_and_it_extends_the_exec_id():
    a = KEY.image_id(ARG_START, END_CODE)
    assert a == ProcKey(KEY.boot_id, KEY.pid, KEY.start_ticks).image_id(ARG_START, END_CODE)
    assert a == "4b7c1a7e-111:74164:4242:" + a.rsplit(":", 1)[1]
    assert len(a.rsplit(":", 1)[1]) == 16


def test_each_ingredient_changes_the_id():
    a = KEY.image_id(ARG_START, END_CODE)
    assert KEY.image_id(ARG_START + 16, END_CODE) != a  # a new stack: the next exec
    assert KEY.image_id(ARG_START, END_CODE + 4096) != a  # another program, ASLR off
    other_boot = ProcKey("00000000-1111-2222-3333-444455556666", KEY.pid, KEY.start_ticks)
    assert other_boot.image_id(ARG_START, END_CODE).rsplit(":", 1)[1] != a.rsplit(":", 1)[1]


def test_the_addresses_do_not_appear_in_the_id():
    a = KEY.image_id(ARG_START, END_CODE)
    for v in (ARG_START, END_CODE):
        assert str(v) not in a and f"{v:x}" not in a


def test_no_layout_no_id():
    # arg_start 0: no mm (kernel thread, zombie) or stat hidden from the reader
    assert KEY.image_id(0, END_CODE) is None
    assert KEY.image_id(None, END_CODE) is None
    assert KEY.image_id(ARG_START, None) is None
