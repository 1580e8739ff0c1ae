"""The driver's compiled pile decoder gives exactly what the register map's ``decode_pile`` gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hw_profiles.registers import (GUN_BLOCK, GUN_STRIDE, PILE_HEADER, PILE_HEADER_WORDS, decode_pile, encode_block,
                                   read_plan)
from hw_profiles.specs import WordOrder

from controller.drivers import PileDecoder


@settings(max_examples=300, deadline=None)
@given(gun_count=st.integers(1, 2), word_order=st.sampled_from(list(WordOrder)), data=st.data())
def test_compiled_decoder_equals_decode_pile(gun_count, word_order, data):
    span = sum(n for _, n in read_plan(gun_count))
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=span, max_size=span))
    words[1] = gun_count  # decode_pile takes the gun count from the header
    assert PileDecoder(gun_count, word_order).decode(words) == decode_pile(words, word_order)


def test_compiled_decoder_reads_engineering_values():
    """Values written with the map's own encoder come back: scaled, signed, 64-bit, strings."""
    header = {"map_version": 1, "gun_count": 1, "pile_max_kw": 360.0, "uptime_s": 70_000}
    gun = {"state": 2, "setpoint_kw": 123.4, "temperature_c": -12.5, "energy_wh": 2**40 + 7,
           "vin": "LZYTBGBW6N1000001", "id_token": "CARD-OK"}
    for order in WordOrder:
        words = encode_block(header, PILE_HEADER, PILE_HEADER_WORDS, order) + encode_block(gun, GUN_BLOCK, GUN_STRIDE, order)
        h, (g,) = PileDecoder(1, order).decode(words)
        assert h["pile_max_kw"] == 360.0 and h["uptime_s"] == 70_000
        assert g["setpoint_kw"] == 123.4 and g["temperature_c"] == -12.5
        assert g["energy_wh"] == 2**40 + 7 and g["vin"] == "LZYTBGBW6N1000001" and g["id_token"] == "CARD-OK"
