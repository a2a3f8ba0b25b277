"""The store on a real PostgreSQL server (a throwaway cluster per session, a fresh database per test)."""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import make_url


def test_cluster_serves_a_fresh_database_per_test(pg_url):
    url = make_url(pg_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password,
                         dbname=url.database) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == url.database
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
