"""The embedded index runs SQLite in WAL mode (readers never wait for the writer, and a crash mid-commit
leaves the last committed state) with a commit on disk before it returns: the archive answers
"stored" right after its index commit.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import text

from pacs.archive import open_archive
from pacs.config import load_settings
from pacs.index.database import create_index_engine


def file_journal_mode(database: Path) -> str:
    """The journal mode recorded in the database file, as a plain connection with no pragmas sees it."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def test_the_index_an_archive_creates_is_a_wal_database(tmp_path: Path) -> None:
    settings = load_settings({"data_dir": tmp_path / "pacs-data"})
    archive = open_archive(settings)
    archive.close()

    database = tmp_path / "pacs-data" / "index.sqlite"
    assert database.is_file()
    assert file_journal_mode(database) == "wal"


def test_every_connection_of_the_index_engine_is_wal_with_full_sync(tmp_path: Path) -> None:
    database = tmp_path / "index.sqlite"
    engine = create_index_engine(f"sqlite:///{database}")
    try:
        connections = [engine.connect() for _ in range(3)]  # distinct pooled connections
        try:
            for conn in connections:
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
                assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
                assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        finally:
            for conn in connections:
                conn.close()
    finally:
        engine.dispose()
    assert file_journal_mode(database) == "wal"
