"""The schema the server builds is the published contract, ``docs/portal-schema.graphql``.

Strawberry's ``print_schema`` of the built schema and the contract are compared definition by
definition: every type, input, enum, union and scalar with its fields or values in their
order, arguments and their defaults, and every description.  Only the order of the
definitions in the file (the contract reads Query first; the printer sorts by name) and the
file's comment header are not compared.
"""

from __future__ import annotations

from pathlib import Path

from graphql import DefinitionNode, parse, print_ast
from strawberry.printer import print_schema

from processors.portal.graphql.schema import build_schema

CONTRACT = Path(__file__).resolve().parents[2] / "docs" / "portal-schema.graphql"


def _definitions(sdl: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for definition in parse(sdl).definitions:
        name = _name(definition)
        assert name not in found, f"{name} is defined twice"
        found[name] = print_ast(definition)
    return found


def _name(definition: DefinitionNode) -> str:
    named = getattr(definition, "name", None)
    assert named is not None, f"an unnamed definition: {type(definition).__name__}"
    return str(named.value)


def test_the_built_schema_prints_the_contract() -> None:
    built = _definitions(print_schema(build_schema()))
    contract = _definitions(CONTRACT.read_text(encoding="utf-8"))
    assert sorted(built) == sorted(contract), "the schema's types differ from the contract's"
    for name in sorted(contract):
        assert built[name] == contract[name], f"{name} differs from the contract"


def test_introspection_does_not_change_the_printed_schema() -> None:
    from processors.portal.config import GraphqlSettings

    assert print_schema(build_schema(GraphqlSettings(introspection=True))) == print_schema(build_schema())
