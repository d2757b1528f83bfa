from pathlib import Path

from ctrlexec.config.reference import render

REPO = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_generated_from_the_schema():
    assert (REPO / "docs" / "configuration.md").read_text() == render(), (
        "run: python3 -m ctrlexec.config.reference > docs/configuration.md"
    )
