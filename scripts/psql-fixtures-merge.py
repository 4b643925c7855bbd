#!/usr/bin/env python3
"""Merges psql describe-query captures into tests/fixtures/psql/queries.sql (issue 10).

Usage: psql-fixtures-merge.py QUERIES_FILE SERVER_MAJOR CAPTURE.sql [CAPTURE.sql ...]

Each CAPTURE.sql is what scripts/capture-psql-fixtures.sh captured from one psql binary against a
PostgreSQL server of major SERVER_MAJOR: its name is `<psql major>.sql`, each query after a
`--- <meta-command>` line (a `-- ` header before the first is ignored). QUERIES_FILE holds every
distinct (meta-command, query) once, followed by the psql and server majors that send it:

    --- \\d items
    -- psql 13 14 15 16 17 on PostgreSQL 15
    -- psql 16 17 on PostgreSQL 16 17
    SELECT ...

The pairs (SERVER_MAJOR, psql major) of the captured majors are replaced by the new capture. For a
server other than 15 (the test clusters' version, replayed live), a query the same psql major sends
to PostgreSQL 15 is left out: it is decided there already.
"""
import os
import re
import sys

BASE_SERVER = 15
VERSIONS = re.compile(r"^-- psql ([0-9 ]+) on PostgreSQL ([0-9 ]+)$")
HEADER = """\
-- The describe queries psql 13-17 send for the meta-commands of commands.txt, each distinct query
-- once: a `--- <meta-command>` line, then one `-- psql <majors> on PostgreSQL <majors>` line per
-- group of psql and server versions that send it, then the query. {{key}} is an OID (oids.sql).
-- Captured with `psql -E` by scripts/capture-psql-fixtures.sh (PostgreSQL licence, see README.md).
-- For servers other than PostgreSQL 15, only the queries that differ from what the same psql sends
-- to PostgreSQL 15 are listed.
"""


def split_blocks(text):
    """(meta-command, lines after it) per `--- ` block; the header before the first is dropped."""
    blocks = []
    for line in text.splitlines(keepends=True):
        if line.startswith("--- "):
            blocks.append((line[4:].rstrip("\n"), []))
        elif blocks:
            blocks[-1][1].append(line)
    return blocks


def load(path):
    """Entries of QUERIES_FILE: [meta, sql, set of (server, psql)] in file order."""
    if not os.path.exists(path):
        return []
    entries = []
    for meta, lines in split_blocks(open(path, encoding="utf-8").read()):
        pairs = set()
        while lines and VERSIONS.match(lines[0].rstrip("\n")):
            m = VERSIONS.match(lines.pop(0).rstrip("\n"))
            pairs |= {(int(s), int(p)) for p in m.group(1).split() for s in m.group(2).split()}
        entries.append([meta, "".join(lines), pairs])
    return entries


def version_lines(pairs):
    """One line per set of psql majors, naming every server that gets exactly those."""
    by_server = {}
    for server, psql in pairs:
        by_server.setdefault(server, set()).add(psql)
    groups = {}
    for server, psqls in sorted(by_server.items()):
        groups.setdefault(tuple(sorted(psqls)), []).append(server)
    return "".join(
        "-- psql %s on PostgreSQL %s\n" % (" ".join(map(str, p)), " ".join(map(str, s)))
        for p, s in sorted(groups.items(), key=lambda g: (g[1], g[0]))
    )


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    path, server, captures = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    entries = load(path)
    majors = {int(os.path.basename(c).split(".")[0]) for c in captures}
    for e in entries:
        e[2] = {(s, p) for s, p in e[2] if not (s == server and p in majors)}
    base = {(p, e[1]) for e in entries for s, p in e[2] if s == BASE_SERVER}
    index = {(e[0], e[1]): e for e in entries}
    for capture in sorted(captures, key=lambda c: int(os.path.basename(c).split(".")[0])):
        major = int(os.path.basename(capture).split(".")[0])
        for meta, lines in split_blocks(open(capture, encoding="utf-8").read()):
            sql = "".join(lines)
            if server != BASE_SERVER and (major, sql) in base:
                continue
            if (meta, sql) not in index:
                index[(meta, sql)] = [meta, sql, set()]
                entries.append(index[(meta, sql)])
            index[(meta, sql)][2].add((server, major))
    with open(path, "w", encoding="utf-8") as out:
        out.write(HEADER)
        for meta, sql, pairs in entries:
            if pairs:
                out.write("--- %s\n%s%s" % (meta, version_lines(pairs), sql))


if __name__ == "__main__":
    main()
