"""The register map: one table, its codec, its generated documentation."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evstack.cli import main
from helpers import ROOT
from hw_profiles import registers as R
from hw_profiles.specs import WordOrder


def test_docs_register_map_is_generated_from_the_table():
    text = (ROOT / "docs" / "register-map.md").read_text(encoding="utf-8")
    assert text == R.render_markdown(), "docs/register-map.md is stale: run `make docs`"


def test_registers_do_not_overlap_and_fit_their_blocks():
    for block, size in ((R.PILE_HEADER, R.PILE_HEADER_WORDS), (R.GUN_BLOCK, R.GUN_STRIDE)):
        used = {}
        for reg in block:
            for a in range(reg.offset, reg.offset + reg.words):
                assert a not in used, f"{reg.name} overlaps {used[a]}"
                assert a < size
                used[a] = reg.name
        assert len({r.name for r in block}) == len(block)


def test_map_carries_what_design_lists():
    need = {"state", "fault_code", "setpoint_kw", "setpoint_a", "applied_limit_kw", "voltage_v", "current_a",
            "power_kw", "energy_wh", "session_energy_wh", "soc_pct", "bms_demand_voltage_v",
            "bms_demand_current_a", "bms_mode", "vin", "temperature_c", "validity_s", "remaining_s",
            "failsafe_kw", "setpoint_accepted", "heartbeat"}
    assert need <= set(R.GUN_REGISTER)
    assert {"map_version", "modules_online"} <= set(R.PILE_REGISTER)
    assert R.GUN_REGISTER["energy_wh"].type is R.RegType.U64  # never wraps in a pile's life


def test_a_two_gun_pile_is_read_in_one_request():
    assert R.read_plan(2) == [(0, R.GUN_BASE + 2 * R.GUN_STRIDE)]
    assert R.read_plan(2)[0][1] <= R.MAX_READ_WORDS
    assert len(R.read_plan(4)) == 2
    assert sum(c for _, c in R.read_plan(4)) == R.GUN_BASE + 4 * R.GUN_STRIDE


def test_locate_finds_every_register_and_nothing_else():
    for reg in R.GUN_BLOCK:
        for word in range(reg.words):
            assert R.locate(R.gun_address(2, reg.name) + word, gun_count=2) == (2, reg)
    assert R.locate(R.gun_base(3), gun_count=2) is None
    assert R.locate(R.PILE_HEADER_WORDS - 1, gun_count=2) is None  # reserved header word


@given(st.sampled_from([r for r in R.GUN_BLOCK + R.PILE_HEADER if r.type is not R.RegType.STRING]),
       st.integers(min_value=0, max_value=2**64 - 1), st.sampled_from(list(WordOrder)))
def test_numeric_codec_round_trips(reg, raw, order):
    bits = 16 * reg.words
    raw = raw % (1 << bits)
    if reg.type is R.RegType.I16:
        raw -= 1 << 15
    value = raw * reg.scale
    words = R.encode(reg, value, order)
    assert len(words) == reg.words and all(0 <= w <= 0xFFFF for w in words)
    assert R.decode(reg, words, order) == pytest.approx(value, abs=reg.scale / 2)


def test_word_order_is_configurable():
    reg = R.GUN_REGISTER["energy_wh"]
    big = R.encode(reg, 0x0001_0002_0003_0004, WordOrder.BIG)
    little = R.encode(reg, 0x0001_0002_0003_0004, WordOrder.LITTLE)
    assert big == [1, 2, 3, 4] and little == [4, 3, 2, 1]
    assert R.decode(reg, little, WordOrder.LITTLE) == 0x0001_0002_0003_0004


def test_strings_round_trip_and_pad():
    reg = R.GUN_REGISTER["vin"]
    words = R.encode(reg, "LFV2A21K5E3123456")
    assert len(words) == 9 and words[0] == (ord("L") << 8) | ord("F")
    assert R.decode(reg, words) == "LFV2A21K5E3123456"
    assert R.decode(reg, R.encode(reg, "")) == ""


def test_out_of_range_values_do_not_encode():
    with pytest.raises(ValueError):
        R.encode(R.GUN_REGISTER["setpoint_kw"], -1)
    with pytest.raises(ValueError):
        R.encode(R.GUN_REGISTER["setpoint_kw"], 7000)


def test_decode_pile_reads_header_and_guns():
    header = {"map_version": R.MAP_VERSION, "gun_count": 2, "modules_online": 11}
    words = R.encode_block(header, R.PILE_HEADER, R.GUN_BASE)
    for n, kw in ((1, 60.0), (2, 45.5)):
        words += R.encode_block({"state": R.GunState.CHARGING, "power_kw": kw, "energy_wh": 123456789012}, R.GUN_BLOCK, R.GUN_STRIDE)
    h, guns = R.decode_pile(words)
    assert h["modules_online"] == 11 and len(guns) == 2
    assert guns[1]["power_kw"] == pytest.approx(45.5)
    assert guns[0]["energy_wh"] == 123456789012


def test_registers_json_cli(capsys):
    assert main(["registers", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["map_version"] == R.MAP_VERSION
    names = {r["name"] for r in doc["registers"]}
    assert "setpoint_kw" in names and "energy_wh" in names
    row = next(r for r in doc["registers"] if r["name"] == "setpoint_kw")
    assert row["access"] == "RW" and row["unit"] == "kW" and row["scale"] == 0.1
