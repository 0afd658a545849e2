"""The SQL API's sandbox: user SQL is checked on ClickHouse's own syntax tree; the checked text is what runs.

1. ClickHouse formats the statement (`formatQuery`): one statement, comments gone, quoting normalised.
   That canonical text is the only text used afterwards.
2. ClickHouse prints the canonical text's syntax tree with the request's parameters bound (`EXPLAIN AST`),
   so a `{name:Identifier}` parameter is checked as the table or column it becomes.
3. The tree is checked against allowlists: node kinds, functions (services/storage/sql_functions.tsv),
   table functions (generators of numbers), and tables (the pipeline's own, or a name the statement defines
   with WITH). A bare name that ClickHouse would call as a function (`currentUser`) must be allowed as one.
   `SETTINGS`, `FORMAT` and `INTO OUTFILE` are refused wherever they appear.
4. The canonical text runs on a read-only connection whose limits the statement cannot change.

The tree printout is parsed strictly: a line this module does not understand refuses the statement,
so anything ClickHouse prints in an unexpected shape fails closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

FUNCTIONS_FILE = Path(__file__).with_name("sql_functions.tsv")
TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateSeries", "values"}
)
SYNTAX_FUNCTIONS = frozenset({"lambda", "exists", "grouping", "untuple"})
COMBINATORS = (
    "MergeState",
    "SimpleState",
    "OrDefault",
    "Distinct",
    "Resample",
    "ForEach",
    "ArgMax",
    "ArgMin",
    "OrNull",
    "Array",
    "Merge",
    "State",
    "Tuple",
    "Null",
    "Map",
    "If",
)
IN_FUNCTIONS = frozenset(
    {"in", "notIn", "globalIn", "globalNotIn", "nullIn", "notNullIn", "globalNullIn", "globalNotNullIn"}
)
FOREIGN_DATABASES = frozenset({"system", "information_schema", "default"})
NODE_KINDS = frozenset(
    {
        "SelectWithUnionQuery",
        "SelectIntersectExceptQuery",
        "SelectQuery",
        "ExpressionList",
        "Subquery",
        "WithElement",
        "TablesInSelectQuery",
        "TablesInSelectQueryElement",
        "TableExpression",
        "TableIdentifier",
        "TableJoin",
        "ArrayJoin",
        "SampleRatio",
        "Function",
        "Identifier",
        "Literal",
        "Asterisk",
        "QualifiedAsterisk",
        "ColumnsRegexpMatcher",
        "ColumnsListMatcher",
        "QualifiedColumnsRegexpMatcher",
        "QualifiedColumnsListMatcher",
        "ColumnsTransformerList",
        "ColumnsExceptTransformer",
        "ColumnsReplaceTransformer",
        "ColumnsReplaceTransformer::Replacement",
        "OrderByElement",
        "WindowDefinition",
        "WindowListElement",
        "InterpolateElement",
    }
)
NAME = r"[A-Za-z_][A-Za-z0-9_]*"
PLAIN_NAME = re.compile(rf"^{NAME}$")
QUALIFIED_NAME = re.compile(rf"^{NAME}(\.{NAME})*$")
SETTINGS_LINE = re.compile(r"(?m)^\s*SETTINGS\b")
WITH_SUBQUERY = re.compile(rf"(?m)^\s*(?:`({NAME})`|({NAME})) AS\n\s*\($")
LINE = re.compile(r"^(?P<indent> *)(?P<kind>\S+)(?P<rest>.*?)(?: \(children (?P<children>[0-9]+)\))?$")


class SandboxError(ValueError):
    """The statement is refused; the message says what and why."""


@dataclass
class Node:
    kind: str
    text: str
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The first word after the kind: a function, table or column name (not trusted beyond that word)."""
        return self.text.split(" ", 1)[0]

    def preorder(self) -> Iterator[Node]:
        """This node, then each child's subtree in order: the order ClickHouse prints them in."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))


def parse_tree(printout: str) -> Node:
    """EXPLAIN AST's printout as a tree; SandboxError if any line or any children count does not fit."""
    nodes: list[tuple[int, Node, int]] = []
    for line in printout.strip("\n").split("\n"):
        match = LINE.match(line)
        if not match:
            raise SandboxError("the statement's syntax tree has a part the sandbox cannot read")
        nodes.append(
            (
                len(match["indent"]),
                Node(match["kind"], match["rest"].removeprefix(" ")),
                int(match["children"] or 0),
            )
        )
    root, end = _build(nodes, 0, 0)
    if end != len(nodes):
        raise SandboxError("the statement's syntax tree has a part the sandbox cannot read")
    return root


def _build(nodes: list[tuple[int, Node, int]], at: int, depth: int) -> tuple[Node, int]:
    if at >= len(nodes) or nodes[at][0] != depth:
        raise SandboxError("the statement's syntax tree has a part the sandbox cannot read")
    _, node, expected = nodes[at]
    at += 1
    for _ in range(expected):
        child, at = _build(nodes, at, depth + 1)
        node.children.append(child)
    return node, at


@dataclass(frozen=True)
class Allowlist:
    """Allowed function names; those the engine matches case-insensitively also lower-cased in *_ci."""

    functions: frozenset[str]
    functions_ci: frozenset[str]
    aggregates: frozenset[str]
    aggregates_ci: frozenset[str]

    @classmethod
    def from_file(cls, path: Path = FUNCTIONS_FILE) -> Allowlist:
        rows = [
            line.split("\t") for line in path.read_text().splitlines() if line and not line.startswith("#")
        ]
        aggregates = [(name, ci) for name, ci, category in rows if category == "aggregate"]
        return cls(
            frozenset(name for name, _, _ in rows),
            frozenset(name.lower() for name, ci, _ in rows if ci == "1"),
            frozenset(name for name, _ in aggregates),
            frozenset(name.lower() for name, ci in aggregates if ci == "1"),
        )

    def allows(self, name: str) -> bool:
        return (
            name in self.functions
            or name.lower() in self.functions_ci
            or name in SYNTAX_FUNCTIONS
            or self._aggregate_with_combinators(name)
        )

    def _aggregate_with_combinators(self, name: str) -> bool:
        """sumIf, uniqMergeState, quantilesIfOrNull: an allowed aggregate followed by combinators."""
        for suffix in COMBINATORS:
            if name.endswith(suffix) and len(name) > len(suffix):
                base = name[: -len(suffix)]
                if (
                    base in self.aggregates
                    or base.lower() in self.aggregates_ci
                    or self._aggregate_with_combinators(base)
                ):
                    return True
        return False


@lru_cache(maxsize=1)
def allowlist() -> Allowlist:
    return Allowlist.from_file()


@dataclass(frozen=True)
class Tables:
    """The tables a statement may read: the pipeline's, bare or qualified with its database.

    engine_functions: every function name the engine knows, lower-cased; a bare identifier with such a
    name may be called as that function (ClickHouse calls `currentUser` without parentheses).
    """

    database: str
    names: frozenset[str]
    engine_functions: frozenset[str] = frozenset()
    private: frozenset[str] = (
        frozenset()
    )  # the database's other tables (schema_migrations): never, not even as a WITH name

    def allows(self, name: str, defined: frozenset[str] = frozenset()) -> bool:
        """A bare name: a pipeline table or a name the statement defines (WITH). Qualified: one of ours."""
        if name in self.private:
            return False
        if PLAIN_NAME.match(name):
            return name in self.names or name in defined
        database, _, table = name.partition(".")
        return database == self.database and table in self.names


@dataclass(frozen=True)
class Scope:
    """What one part of a statement may use: the tables, the WITH names of the queries around it, the
    functions."""

    tables: Tables
    defined: frozenset[str]
    functions: Allowlist


def check_tree(
    root: Node, tables: Tables, with_names: list[str] | None = None, functions: Allowlist | None = None
) -> None:
    """Refuse (SandboxError) anything but one plain SELECT over allowed tables with allowed functions.

    with_names: the names of the tree's WithElement nodes, in the order they appear (defined_names()).
    """
    if root.kind != "SelectWithUnionQuery":
        raise SandboxError(f"only SELECT (or WITH ... SELECT) is allowed, got {root.kind}")
    if len(root.children) != 1:
        raise SandboxError(
            "INTO OUTFILE and FORMAT are not allowed; the output format is fixed by the server"
        )
    _name_with_elements(root, with_names or [])
    _check_scope(root, None, Scope(tables, frozenset(), functions or allowlist()))


def _name_with_elements(root: Node, names: list[str]) -> None:
    elements = [node for node in root.preorder() if node.kind == "WithElement"]
    if len(elements) != len(names):
        raise SandboxError("a WITH clause of the statement has a name the sandbox cannot read")
    for element, name in zip(elements, names, strict=True):
        element.text = name


def _check_scope(node: Node, parent: Node | None, scope: Scope) -> None:
    """Check node and its subtree; a query's WITH names are visible in that query and everything inside it."""
    _check_node(node, parent, scope)
    if node.kind == "SelectQuery":
        names = {
            element.text
            for child in node.children
            if child.kind == "ExpressionList"
            for element in child.children
            if element.kind == "WithElement"
        }
        scope = Scope(scope.tables, scope.defined | names, scope.functions)
    for child in node.children:
        _check_scope(child, node, scope)


def _check_node(node: Node, parent: Node | None, scope: Scope) -> None:
    if node.kind == "Set":
        raise SandboxError("SETTINGS is not allowed; limits are fixed by the server")
    if node.kind not in NODE_KINDS:
        raise SandboxError(f"{node.kind} is not allowed in a read-only query")
    if node.kind == "Function":
        _check_function(node, parent, scope)
    elif node.kind == "TableIdentifier":
        _check_table(node.name, scope)
    elif node.kind == "Identifier":
        _check_identifier(node.name, scope)


def _check_function(node: Node, parent: Node | None, scope: Scope) -> None:
    name = node.name
    if parent is not None and parent.kind == "TableExpression":
        if name not in TABLE_FUNCTIONS:
            raise SandboxError(f"table function {name!r} is not allowed; allowed: {sorted(TABLE_FUNCTIONS)}")
        return
    if not scope.functions.allows(name):
        raise SandboxError(f"function {name!r} is not allowed in the SQL API")
    if name in IN_FUNCTIONS:
        _check_in_operand(node, scope)


def _check_in_operand(node: Node, scope: Scope) -> None:
    """`x IN name` reads the table `name` (or a system table of that name): only a pipeline table may stand
    there."""
    arguments = node.children[0].children if node.children else []
    if len(arguments) == 2 and arguments[1].kind == "Identifier":
        _check_table(arguments[1].name, Scope(scope.tables, frozenset(), scope.functions))


def _check_table(name: str, scope: Scope) -> None:
    if not QUALIFIED_NAME.match(name) or not scope.tables.allows(name, scope.defined):
        raise SandboxError(f"table {name!r} is not readable here; tables: {sorted(scope.tables.names)}")


def _check_identifier(name: str, scope: Scope) -> None:
    database = name.split(".", 1)[0]
    if "." in name and database.lower() in FOREIGN_DATABASES:
        raise SandboxError(f"{name!r} is outside the pipeline's database")
    if name.lower() in scope.tables.engine_functions and not scope.functions.allows(name):
        raise SandboxError(f"{name!r} names the function {name!r}, which is not allowed in the SQL API")


Runner = Callable[[str, dict[str, Any]], list[dict[str, Any]]]


def canonical_statement(run: Runner, sql: str, params: dict[str, Any], tables: Tables) -> str:
    """The statement as ClickHouse formats it, once its syntax tree passed the checks; SandboxError otherwise.

    run(sql, params) executes on the read-only connection; ClickHouse errors propagate to the caller.
    """
    rows = run("SELECT formatQuery({statement:String}) AS q", {"statement": sql})
    canonical: str = rows[0]["q"]
    if SETTINGS_LINE.search(canonical):  # refused before EXPLAIN, which would apply them
        raise SandboxError("SETTINGS is not allowed; limits are fixed by the server")
    printout = run("EXPLAIN AST " + canonical, params)
    try:
        check_tree(
            parse_tree("\n".join(row["explain"] for row in printout)), tables, defined_names(canonical)
        )
    except RecursionError:
        raise SandboxError("the statement nests too deeply to be checked") from None
    return canonical


def defined_names(canonical: str) -> list[str]:
    """The names a formatted statement's WITH clauses give to subqueries: `name AS` on a line, `(` on the
    next.

    Only ClickHouse's own formatting is read here; in it no literal or identifier holds a raw line break,
    so the shape can come from nothing but a WITH clause. A name missed here only refuses the statement.
    """
    return [match[1] or match[2] for match in WITH_SUBQUERY.finditer(canonical)]
