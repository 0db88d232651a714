import csv
import stat

from defguard_entra._files import csv_bytes, write_private_file


def test_private_file_is_owner_only_and_replaced_atomically(tmp_path) -> None:
    path = tmp_path / "secret.json"
    path.write_text("old")
    path.chmod(0o644)
    write_private_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.json"]  # no temp file left behind


def test_csv_cells_cannot_become_spreadsheet_formulas() -> None:
    data = csv_bytes(["a", "b", "c"], [{"a": "=HYPERLINK(1)", "b": None, "c": "@x"}, {"a": "plain", "b": 3, "c": "-1"}])
    rows = list(csv.DictReader(data.decode().splitlines()))
    assert rows == [{"a": "'=HYPERLINK(1)", "b": "", "c": "'@x"}, {"a": "plain", "b": "3", "c": "'-1"}]
