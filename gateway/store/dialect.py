"""The store's SQLite SQL, spelled for PostgreSQL: one mechanical translation per distinct statement.

The repositories write SQLite SQL (``?`` placeholders, ``INSERT OR IGNORE``, ``INDEXED BY``, a few
SQLite functions). On PostgreSQL (gateway/store/pg.py) every statement goes through ``translate``
once; ``Translator`` caches the result per SQL string, so the cost is paid once per statement text
per process, not per execution. What it rewrites, and why each rewrite keeps SQLite's meaning:

- ``?`` -> ``%s`` (psycopg's placeholder); a literal ``%`` is doubled (psycopg reads it as one).
- ``INSERT OR IGNORE INTO t ...`` -> ``INSERT INTO t ... ON CONFLICT DO NOTHING``.
- ``INDEXED BY name`` dropped (PostgreSQL's planner picks; it has no hints).
- ``IFNULL`` -> ``COALESCE``, ``group_concat`` -> ``string_agg``, ``instr`` -> ``strpos``, the
  two-argument scalar ``max(a, b)``/``min(a, b)`` -> ``GREATEST``/``LEAST`` (the one-argument forms
  are the aggregates, the same in both).
- ``SUM(a = b)`` (SQLite counts with a comparison's 0/1) -> ``SUM((a = b)::int)``.
- A bare ``1``/``0`` as a condition (``WHERE 1 AND ...``, built by a list of terms) -> ``TRUE``/``FALSE``.
- ``x IS ?`` / ``x IS NOT ?`` (SQLite's null-safe comparison) -> ``IS [NOT] DISTINCT FROM``.
- ``x = ? COLLATE NOCASE`` -> ``lower(x) = lower(?)``.
- ``LIKE`` -> ``ILIKE``: SQLite's LIKE ignores ASCII case, PostgreSQL's does not.
- ``LIMIT ?`` -> ``LIMIT NULLIF(GREATEST(?, -1), -1)``: a negative limit is "no limit" in SQLite
  (the repositories pass -1 for "all"), an error in PostgreSQL (whose "no limit" is NULL).
- ``json_extract(col, '$.a.b')`` -> ``(col::jsonb #>> '{a,b}')`` (text); compared ``= 1`` it
  is the JSON true or 1 (SQLite's json_extract gives 1 for true). ``json_each(?)`` ->
  ``json_array_elements_text(?::json)`` with a ``value`` column.
- ``zeroblob(?)`` -> an empty bytea (the size parameter is still consumed): the bytes follow
  through ``blobopen``, which pg.py emulates with one UPDATE.
- ``rowid`` -> ``id``: every table a statement walks by rowid has ``id INTEGER PRIMARY KEY`` (its
  alias) but message_ids, which on PostgreSQL has an ``id`` identity of its own for this.
- ``sqlite_master WHERE type = 'table'`` -> the current schema's tables (information_schema).
- ``EXPLAIN QUERY PLAN`` -> ``EXPLAIN``.
- An ``UPDATE``/``DELETE ... WHERE id IN (SELECT ... LIMIT ?)`` (the delivery claim, the sweeps):
  the subquery gets ``FOR UPDATE SKIP LOCKED``, so two nodes claiming at once take different rows
  instead of one waiting for the other's rows and then updating them again.
- In an upsert's ``DO UPDATE SET``, a bare column of the table is the existing row's (SQLite);
  PostgreSQL calls it ambiguous (``excluded`` has it too): it is qualified with the table name.
- An ``INSERT`` into a table with an ``id`` identity and no ``RETURNING`` gets ``RETURNING id``:
  that is ``cursor.lastrowid`` (PostgreSQL has none).

What cannot be translated mechanically is rare and stays in the store package as a small
backend branch (see pg.py). A statement the rules do not cover runs as written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Whole-statement rewrites, applied to the SQL with its literals (they contain quoted text).
_JSON_EXTRACT_TRUE = re.compile(r"json_extract\(([\w.]+),\s*'\$\.([\w.]+)'\)\s*=\s*1\b")
_JSON_EXTRACT = re.compile(r"json_extract\(([\w.]+),\s*'\$\.([\w.]+)'\)")
_JSON_EACH = re.compile(r"json_each\(\?\)")
_MASTER = re.compile(r"\bsqlite_master\s+WHERE\s+type\s*=\s*'table'", re.IGNORECASE)
_MASTER_PG = ("(SELECT table_name AS name FROM information_schema.tables WHERE table_schema = current_schema()) AS sqlite_master"
              " WHERE TRUE")
# A string literal, a double-quoted identifier, or anything else: rewrites below touch code only.
_TOKENS = re.compile(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")")
_INSERT = re.compile(r"^\s*INSERT\s+(OR\s+IGNORE\s+)?INTO\s+(\w+)", re.IGNORECASE)
_CODE_RULES = [
    (re.compile(r"\bINDEXED\s+BY\s+\w+\s*", re.IGNORECASE), ""),
    (re.compile(r"\bINSERT\s+OR\s+IGNORE\s+INTO\b", re.IGNORECASE), "INSERT INTO"),
    (re.compile(r"\bIFNULL\s*\(", re.IGNORECASE), "COALESCE("),
    (re.compile(r"\bgroup_concat\s*\(", re.IGNORECASE), "string_agg("),
    (re.compile(r"\binstr\s*\(", re.IGNORECASE), "strpos("),
    (re.compile(r"\bNOT\s+LIKE\b", re.IGNORECASE), "NOT ILIKE"),
    (re.compile(r"(?<!NOT )\bLIKE\b", re.IGNORECASE), "ILIKE"),
    (re.compile(r"\bEXPLAIN\s+QUERY\s+PLAN\b", re.IGNORECASE), "EXPLAIN"),
    (re.compile(r"\b(WHERE|AND|OR|NOT|ON)\s+1(?=\s*(?:$|\)|\bAND\b|\bOR\b|\bORDER\b|\bGROUP\b|\bLIMIT\b))", re.IGNORECASE), r"\1 TRUE"),
    (re.compile(r"\b(WHERE|AND|OR|NOT|ON)\s+0(?=\s*(?:$|\)|\bAND\b|\bOR\b|\bORDER\b|\bGROUP\b|\bLIMIT\b))", re.IGNORECASE), r"\1 FALSE"),
    (re.compile(r"\bIS\s+NOT\s+\?", re.IGNORECASE), "IS DISTINCT FROM ?"),
    (re.compile(r"\bIS\s+\?", re.IGNORECASE), "IS NOT DISTINCT FROM ?"),
    (re.compile(r"([\w.]+)\s*=\s*\?\s+COLLATE\s+NOCASE\b", re.IGNORECASE), r"lower(\1) = lower(?)"),
    (re.compile(r"\bLIMIT\s+\?", re.IGNORECASE), "LIMIT NULLIF(GREATEST(?::bigint, -1), -1)"),
    (re.compile(r"\bzeroblob\(\?\)", re.IGNORECASE), "substring(''::bytea from 1 for ?::int)"),
    (re.compile(r"\browid\b", re.IGNORECASE), "id"),
]
_SCALAR = re.compile(r"\b(max|min)\s*\(", re.IGNORECASE)
_SUM = re.compile(r"\bSUM\s*\(", re.IGNORECASE)
_COMPARISON = re.compile(r"(=|<|>|\bIN\b|\bIS\b|\bLIKE\b)", re.IGNORECASE)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)
_DO_UPDATE = re.compile(r"\bDO\s+UPDATE\s+SET\b", re.IGNORECASE)
_SET_END = re.compile(r"\b(WHERE|RETURNING)\b", re.IGNORECASE)
_IDENT = re.compile(r"(?<![.\w%])([A-Za-z_]\w*)\b(?!\s*[.(])")
_CLAIM = re.compile(r"^\s*(UPDATE|DELETE)\b.*\bIN\s*\(\s*SELECT\b", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Statement:
    sql: str             # PostgreSQL text, %s placeholders
    returns_id: bool     # RETURNING id was added: the cursor's lastrowid, not rows for the caller


def _scalar_minmax(code: str) -> str:
    """``max(a, b)`` -> ``GREATEST(a, b)`` where the call has a top-level comma (the scalar form)."""
    out, pos = [], 0
    for m in _SCALAR.finditer(code):
        if m.start() < pos:
            continue
        depth, i, comma = 1, m.end(), False
        while i < len(code) and depth:
            c = code[i]
            depth += (c == "(") - (c == ")")
            comma = comma or (c == "," and depth == 1)
            i += 1
        if comma:
            out.append(code[pos:m.start()])
            out.append("GREATEST(" if m.group(1).lower() == "max" else "LEAST(")
            pos = m.end()
    out.append(code[pos:])
    return "".join(out)


def _qualify_upsert(code: str, table: str, columns: frozenset[str]) -> str:
    """Bare column names after DO UPDATE SET, other than the assignment targets, as ``table.column``."""
    m = _DO_UPDATE.search(code)
    if m is None or not columns:
        return code
    end = _SET_END.search(code, m.end())
    stop = end.start() if end else len(code)
    clause = code[m.end():stop]
    # Walk identifiers; one is a target when only spaces since the clause start or a top-level comma.
    pieces, pos, depth = [], 0, 0
    for ident in _IDENT.finditer(clause):
        before = clause[pos:ident.start()]
        for c in before:
            depth += (c == "(") - (c == ")")
        pieces.append(before)
        name = ident.group(1)
        preceding = clause[:ident.start()].rstrip()
        is_target = depth == 0 and (preceding == "" or preceding.endswith(","))
        pieces.append(f"{table}.{name}" if name.lower() in columns and not is_target else name)
        pos = ident.end()
    pieces.append(clause[pos:])
    return code[:m.end()] + "".join(pieces) + code[stop:]


def _sum_of_comparison(code: str) -> str:
    """``SUM(a = b)`` -> ``SUM((a = b)::int)``: a comparison is a boolean in PostgreSQL, not 0/1."""
    out, pos = [], 0
    for m in _SUM.finditer(code):
        depth, i = 1, m.end()
        while i < len(code) and depth:
            depth += (code[i] == "(") - (code[i] == ")")
            i += 1
        arg = code[m.end():i - 1]
        if _COMPARISON.search(arg) and not arg.lstrip().upper().startswith("CASE"):
            out.append(code[pos:m.end()] + f"({arg})::int")
            pos = i - 1
    out.append(code[pos:])
    return "".join(out)


def _skip_locked(sql: str) -> str:
    """Add FOR UPDATE SKIP LOCKED to the LIMITed subquery of an UPDATE/DELETE ... IN (SELECT ...)."""
    if not _CLAIM.match(sql):
        return sql
    start = re.search(r"\bIN\s*\(\s*SELECT\b", sql, re.IGNORECASE).start()
    open_at = sql.index("(", start)
    depth, i = 0, open_at
    while i < len(sql):
        depth += (sql[i] == "(") - (sql[i] == ")")
        if depth == 0:
            break
        i += 1
    inner = sql[open_at + 1:i]
    if not re.search(r"\bLIMIT\b", inner, re.IGNORECASE) or re.search(r"\bJOIN\b|\bGROUP\s+BY\b|\bDISTINCT\b", inner, re.IGNORECASE):
        return sql
    # ``= ANY(ARRAY(...))``, not ``IN (...)``: the array is an InitPlan, run once. PostgreSQL may plan
    # an IN (SELECT ... LIMIT n) as a join that runs the subquery again per outer row, and with SKIP
    # LOCKED each run picks other rows: one claim of 3 took 6 (tests/test_store_pg.py).
    # A row value on the left ((a, b) IN (SELECT a, b ...)) has no array form: it keeps the IN.
    single = re.search(r"(?<![)\s])\s*\b[A-Za-z_][A-Za-z0-9_.]*\s+IN\s*\($", sql[:open_at + 1], re.IGNORECASE)
    if single is None:
        return sql[:i] + " FOR UPDATE SKIP LOCKED" + sql[i:]
    in_at = re.search(r"\bIN\s*\($", sql[:open_at + 1], re.IGNORECASE).start()
    return sql[:in_at] + "= ANY(ARRAY(" + inner + " FOR UPDATE SKIP LOCKED))" + sql[i + 1:]


def translate(sql: str, id_tables: frozenset[str] = frozenset(), *, many: bool = False,
              columns: dict[str, frozenset[str]] | None = None) -> Statement:
    """SQLite ``sql`` as PostgreSQL; ``id_tables``: tables whose ``id`` is an identity (for lastrowid);
    ``columns``: each table's columns (for upserts)."""
    insert = _INSERT.match(sql)
    ignore = bool(insert and insert.group(1))
    sql = _JSON_EXTRACT_TRUE.sub(lambda m: f"({m.group(1)}::jsonb #> '{{{m.group(2).replace('.', ',')}}}') IN ('true', '1')", sql)
    sql = _JSON_EXTRACT.sub(lambda m: f"({m.group(1)}::jsonb #>> '{{{m.group(2).replace('.', ',')}}}')", sql)
    sql = _JSON_EACH.sub("json_array_elements_text(?::json) AS j(value)", sql)
    sql = _MASTER.sub(_MASTER_PG, sql)
    # Literals are set aside (a NUL-delimited mark each) so that the rewrites see only SQL.
    literals: list[str] = []

    def aside(m: re.Match) -> str:
        literals.append(m.group(0))
        return f"\x00{len(literals) - 1}\x00"

    code = _TOKENS.sub(aside, sql)
    for pattern, replacement in _CODE_RULES:
        code = pattern.sub(replacement, code)
    if insert and columns:
        code = _qualify_upsert(code, insert.group(2).lower(), columns.get(insert.group(2).lower(), frozenset()))
    code = _sum_of_comparison(_scalar_minmax(code)).replace("%", "%%").replace("?", "%s")
    code = re.sub(r"\x00(\d+)\x00", lambda m: literals[int(m.group(1))].replace("%", "%%"), code)
    out = _skip_locked(code)
    if ignore:
        returning = _RETURNING.search(out)
        cut = returning.start() if returning else len(out)
        out = out[:cut].rstrip() + " ON CONFLICT DO NOTHING" + (" " + out[cut:] if returning else "")
    returns_id = bool(insert and not many and insert.group(2).lower() in id_tables and not _RETURNING.search(out))
    if returns_id:
        out = out.rstrip().rstrip(";") + " RETURNING id"
    return Statement(out, returns_id)


class Translator:
    """``translate`` with a cache: each distinct statement text is translated once."""

    def __init__(self, id_tables: frozenset[str] = frozenset(), columns: dict[str, frozenset[str]] | None = None):
        self.id_tables = id_tables
        self.columns = columns or {}
        self._one: dict[str, Statement] = {}   # by the SQL text alone: no key tuple built per execution
        self._many: dict[str, Statement] = {}

    def __call__(self, sql: str, *, many: bool = False) -> Statement:
        cache = self._many if many else self._one
        found = cache.get(sql)
        if found is None:
            found = cache[sql] = translate(sql, self.id_tables, many=many, columns=self.columns)
        return found

    def statements(self) -> list[tuple[str, bool]]:
        """Every (SQL, many) translated so far."""
        return [(sql, False) for sql in self._one] + [(sql, True) for sql in self._many]

    def __len__(self) -> int:
        return len(self._one) + len(self._many)
