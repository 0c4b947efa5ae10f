"""Extraction and transformation: schema checks, the download path, leakage groups."""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest

from categorizer import data, prepare
from categorizer.config import DEFAULT_TEST_PRODUCTS_PATH, TrainSettings
from categorizer.features import FeatureSpec

HEADER = ",".join(data.COLUMNS)


def row(product: int, title: str, category: str, tags: str = "") -> str:
    return f'{product},1,q,1,0,"{title}","{tags}",2018-01-01 00:00:00,9.9,,1,1,10,,{category}'


def write_csv(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A static file server on 127.0.0.1 standing in for the public bucket."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **k: _QuietHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_load_reads_a_valid_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", row(1, "Body bebê", "Bebê"), row(2, "Colar", "Bijuterias e Jóias"))
    frame = data.load(path)
    assert frame["title"].tolist() == ["Body bebê", "Colar"]


def test_load_names_a_missing_column(tmp_path: Path) -> None:
    header = HEADER.replace(",concatenated_tags", "")
    path = write_csv(tmp_path / "d.csv", header=header)
    with pytest.raises(data.DatasetError, match=r"missing column.*concatenated_tags"):
        data.load(path)


def test_load_rejects_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("", encoding="utf-8")
    with pytest.raises(data.DatasetError, match="empty"):
        data.load(path)


def test_load_rejects_a_header_without_rows(tmp_path: Path) -> None:
    with pytest.raises(data.DatasetError, match="no rows"):
        data.load(write_csv(tmp_path / "d.csv"))


def test_load_names_an_unknown_category(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", row(1, "Carro", "Automóveis"))
    with pytest.raises(data.DatasetError, match="unknown category 'Automóveis'"):
        data.load(path)


def test_load_downloads_a_missing_file(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, root = http_root
    write_csv(root / "elo7.csv", row(1, "Caneca", "Decoração"))
    dest = tmp_path / "data" / "elo7.csv"
    frame = data.load(dest, url=f"{url}/elo7.csv")
    assert dest.is_file()
    assert frame["category"].tolist() == ["Decoração"]
    assert not list(dest.parent.glob("tmp*")), "the partial download was left behind"


def test_download_fails_clearly_when_unreachable(tmp_path: Path, free_port: int) -> None:
    dest = tmp_path / "elo7.csv"
    with pytest.raises(data.DatasetError, match=r"could not download.*offline"):
        data.download(f"http://127.0.0.1:{free_port}/elo7.csv", dest, timeout=5)
    assert not dest.exists()


def test_a_failed_download_leaves_no_file_or_directory(tmp_path: Path, free_port: int) -> None:
    with pytest.raises(data.DatasetError):
        data.download(
            f"http://127.0.0.1:{free_port}/elo7.csv", tmp_path / "new" / "dir" / "elo7.csv", timeout=5
        )
    assert list(tmp_path.iterdir()) == []


def test_a_download_cut_short_is_an_error_not_a_dataset(tmp_path: Path) -> None:
    # The server promises 100,000 bytes, sends 27 and closes: Python 3.9's read() then
    # returns b"" as at a normal end.
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_a_cut_file() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + HEADER[:27].encode())

    thread = threading.Thread(target=serve_a_cut_file, daemon=True)
    thread.start()
    dest = tmp_path / "data" / "elo7.csv"
    try:
        with pytest.raises(data.DatasetError, match="could not download"):
            data.download(f"http://127.0.0.1:{listener.getsockname()[1]}/elo7.csv", dest, timeout=10)
    finally:
        thread.join(10)
        listener.close()
    assert list(tmp_path.iterdir()) == []


def test_text_spelled_like_a_missing_value_is_text(tmp_path: Path) -> None:
    # pandas reads "NA", "null", "None" and "nan" as missing; a client may send them as titles.
    path = write_csv(
        tmp_path / "elo7.csv",
        row(1, "NA", "Decoração"),
        row(2, "null", "Decoração", tags="None"),
        row(3, "", "Decoração"),
    )
    frame = prepare.clean(data.load(path))
    assert frame["title"].tolist() == ["NA", "null"]  # the empty title alone is dropped
    assert frame["concatenated_tags"].tolist() == ["", "None"]


def test_settings_refuse_a_dataset_path_that_is_not_there(tmp_path: Path) -> None:
    # Only the default path is downloaded to: a typo must not fetch the file there.
    typo = tmp_path / "dat" / "elo7.csv"
    with pytest.raises(
        data.DatasetError, match=r"^DATASET_PATH=.*Put the CSV at .* or point DATASET_PATH at it"
    ):
        TrainSettings.from_env({"DATASET_PATH": str(typo)})
    assert list(tmp_path.iterdir()) == []


def test_settings_leave_a_missing_default_dataset_to_the_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for env in ({}, {"DATASET_PATH": str(data.DEFAULT_DATASET_PATH)}):
        assert TrainSettings.from_env(env).dataset_path == data.DEFAULT_DATASET_PATH


def test_settings_refuse_a_test_products_path_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(data.DatasetError, match=r"^TEST_PRODUCTS_PATH=.*unset TEST_PRODUCTS_PATH to skip"):
        TrainSettings.from_env({"TEST_PRODUCTS_PATH": str(tmp_path / "test_product.csv")})


def test_settings_skip_the_public_test_only_when_unset_and_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert TrainSettings.from_env({}).test_products_path is None
    given = write_csv(tmp_path / "t.csv")
    assert TrainSettings.from_env({"TEST_PRODUCTS_PATH": str(given)}).test_products_path == given
    DEFAULT_TEST_PRODUCTS_PATH.parent.mkdir()
    write_csv(DEFAULT_TEST_PRODUCTS_PATH)
    assert TrainSettings.from_env({}).test_products_path == DEFAULT_TEST_PRODUCTS_PATH


def test_download_fails_clearly_on_http_error(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    url, _ = http_root
    with pytest.raises(data.DatasetError, match="404"):
        data.download(f"{url}/missing.csv", tmp_path / "elo7.csv")


def test_sha256_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "x"
    path.write_bytes(b"abc")
    assert data.sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_clean_squashes_whitespace_and_fills_missing_tags_and_queries() -> None:
    frame = pd.DataFrame(
        {
            "title": ["  a \t b ", None, "c"],
            "concatenated_tags": [None, "x", " y  z "],
            "query": [" q  r", "s", None],
        }
    )
    cleaned = prepare.clean(frame)
    assert cleaned["title"].tolist() == ["a b", "c"]
    assert cleaned["concatenated_tags"].tolist() == ["", "y z"]
    assert cleaned["query"].tolist() == ["q r", ""]


def test_query_shares_split_each_query_by_the_categories_it_showed() -> None:
    frame = pd.DataFrame(
        {
            "query": ["caneca", "caneca", "caneca", "", "", "body"],
            "category": ["Decoração", "Decoração", "Bebê", "Bebê", "Bebê", "Bebê"],
        }
    )
    shares = prepare.query_shares(frame)
    # Rows without a query teach nothing; each query's shares sum to one.
    assert sorted(zip(shares["query"], shares["category"], shares["share"].round(4))) == [
        ("body", "Bebê", 1.0),
        ("caneca", "Bebê", 0.3333),
        ("caneca", "Decoração", 0.6667),
    ]


def test_leakage_groups_link_products_and_normalised_titles() -> None:
    frame = pd.DataFrame(
        {
            "product_id": [1, 1, 2, 3, 4],
            "title": ["Caneca Azul", "Caneca azul!", "CANECA AZUL", "Outro", "Outro produto"],
        }
    )
    groups = prepare.leakage_groups(frame, FeatureSpec())
    # 1 and 2 share a title once folded; 3 and 4 share nothing.
    assert groups[0] == groups[1] == groups[2]
    assert len({groups[0], groups[3], groups[4]}) == 3


def test_deduplicate_keeps_distinct_examples() -> None:
    frame = pd.DataFrame(
        {
            "title": ["a", "a", "a", "b"],
            "concatenated_tags": ["t", "t", "u", "t"],
            "category": ["X", "X", "X", "Y"],
        }
    )
    assert len(prepare.deduplicate(frame)) == 3
