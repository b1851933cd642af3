"""`emma market parse FILE` as a user runs it: a subprocess of the installed `emma` command."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli_process import run_emma

DATA = Path(__file__).parent / "data"


def lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_prints_the_document_then_one_line_per_series_in_utc() -> None:
    result = run_emma("market", "parse", str(DATA / "A44_DE-LU_2024-10-06_07_dayahead_PT60M+PT15M_negative.xml"))
    assert result.returncode == 0, result.stderr
    header, hourly, quarter = lines(result.stdout)
    assert header["kind"] == "prices" and header["source"] == "entsoe"
    assert header["interval"] == ["2024-10-05T22:00:00Z", "2024-10-07T22:00:00Z"]
    assert {k: hourly[k] for k in ("zone", "product", "sequence", "contract_type", "auction", "resolution")} == {
        "zone": "10Y1001A1001A82H",
        "product": "day_ahead",
        "sequence": 1,
        "contract_type": "A01",
        "auction": 0,
        "resolution": "PT60M",
    }
    assert (quarter["sequence"], quarter["resolution"]) == (2, "PT15M")
    slots = hourly["slots"]
    assert isinstance(slots, list) and len(slots) == 48
    assert slots[0] == {"start": "2024-10-05T22:00:00Z", "value": 67.04}
    # 12:00Z was omitted in the A03 curve and repeats 11:00Z's -0.01.
    assert slots[13:15] == [
        {"start": "2024-10-06T11:00:00Z", "value": -0.01},
        {"start": "2024-10-06T12:00:00Z", "value": -0.01},
    ]


def test_intraday_auction_and_no_data() -> None:
    ida = run_emma("market", "parse", str(DATA / "derived_A44_DE-LU_2024-06-14_intraday_IDA2_PT30M+PT15M.xml"))
    assert ida.returncode == 0, ida.stderr
    series = lines(ida.stdout)[1:]
    assert {(s["contract_type"], s["auction"], s["resolution"]) for s in series} == {
        ("A07", 2, "PT30M"),
        ("A07", 2, "PT15M"),
    }
    ack = run_emma("market", "parse", str(DATA / "Acknowledgement_999_no_matching_data.xml"))
    assert ack.returncode == 0, ack.stderr
    [header] = lines(ack.stdout)
    assert (header["kind"], header["no_data_reason"]) == ("no-data", "No matching data found")


def test_flows_print_their_direction() -> None:
    result = run_emma("market", "parse", str(DATA / "derived_A11_FR-DE-LU_2024-10-07_flows_gap.xml"))
    assert result.returncode == 0, result.stderr
    flows = lines(result.stdout)[1:]
    fr_de = next(f for f in flows if f["out_zone"] == "10YFR-RTE------C")
    assert fr_de["in_zone"] == "10Y1001A1001A82H" and fr_de["series"] == "flow"
    assert isinstance(fr_de["slots"], list) and len(fr_de["slots"]) == 22


def test_a_bad_document_is_one_line_naming_document_and_field_exit_2(tmp_path: Path) -> None:
    good = (DATA / "A44_DE-LU_2026-02-02_03_dayahead_PT15M_two_sequences.xml").read_bytes()
    bad = tmp_path / "broken.xml"
    bad.write_bytes(good.replace(b"<position>3</position>", b"<position>300</position>", 1))
    result = run_emma("market", "parse", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("emma market parse: error: broken.xml: TimeSeries[0].Period[0].Point[2].position: ")
    assert "300" in line


def test_a_missing_file_is_one_line_exit_2(tmp_path: Path) -> None:
    result = run_emma("market", "parse", str(tmp_path / "absent.xml"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "absent.xml" in line and "cannot read" in line


def test_an_error_body_with_line_breaks_is_still_one_line(tmp_path: Path) -> None:
    body = tmp_path / "esios.json"
    body.write_text('{"message": "HTTP Token:\\nAccess denied.\\r\\nRetry later"}', encoding="utf-8")
    result = run_emma("market", "parse", str(body))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line == (
        "emma market parse: error: esios.json: message: "
        "the API answered with an error: HTTP Token: Access denied. Retry later"
    )
