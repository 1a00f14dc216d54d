"""The README's generated parts and the two-command contract cannot drift."""
from pathlib import Path

from compress.recipe import readme_with_reference

ROOT = Path(__file__).resolve().parent.parent


def test_recipe_reference_is_current():
    text = (ROOT / "docs" / "recipes.md").read_text()
    assert readme_with_reference(text) == text, "run `make readme` to regenerate the recipe reference"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "make test" in ci


def test_readme_links_to_existing_docs():
    import re

    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert len(links) >= 8 and all((ROOT / link).is_file() for link in links), links
