"""The shipped configurations: `hestia.yml` and every `docs/examples/*.yml` pass `hestia check`,
each recipe's page shows its file unchanged, and the notebook of `hestia.yml` is the JupyterLab
recipe's (the browser suite runs the former; the docs show the latter)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from hestia.config import Config, RouteConfig, load_config, upstream_warnings
from hestia.routing.router import load_registry, strategy_errors

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "docs" / "examples"
RECIPES = ["comfyui", "gradio", "jupyterlab", "open-webui"]
CONFIGS = [ROOT / "hestia.yml", *sorted(EXAMPLES.glob("*.yml"))]
# What `hestia check` reads from the environment, pinned: no variable of the test machine's
# (NOTEBOOK_PORT, <SERVICE>_<FIELD> overrides) changes what is checked.
ENV = {"HOME": "/home/someone"}


def check(path: Path) -> Config:
    """Load `path` as `hestia check` does: the models, references and every strategy."""
    def strategies(directory: Path,
                   routes: Mapping[str, RouteConfig]) -> list[tuple[str, str]]:
        return strategy_errors(routes, load_registry(directory))
    return load_config(path, env=ENV, check_strategies=strategies)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configuration_passes_hestia_check(path: Path) -> None:
    config = check(path)
    assert config.services
    assert upstream_warnings(config) == []


def test_every_recipe_has_its_configuration_its_page_and_an_index_entry() -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.yml")) == RECIPES
    assert sorted(p.stem for p in EXAMPLES.glob("*.md") if p.stem != "README") == RECIPES
    index = (EXAMPLES / "README.md").read_text()
    for name in RECIPES:
        assert f"({name}.md)" in index and f"({name}.yml)" in index


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_page_shows_its_configuration_verbatim(name: str) -> None:
    shipped = (EXAMPLES / f"{name}.yml").read_text()
    page = (EXAMPLES / f"{name}.md").read_text()
    assert f"```yaml\n{shipped}```\n" in page


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_serves_its_app_on_a_host_route(name: str) -> None:
    config = check(EXAMPLES / f"{name}.yml")
    assert config.service_domain == "localhost"
    assert config.listen == "127.0.0.1:8080"


def test_shipped_notebook_is_the_jupyterlab_recipe() -> None:
    shipped = check(ROOT / "hestia.yml")
    recipe = check(EXAMPLES / "jupyterlab.yml")
    assert shipped.service_domain == recipe.service_domain == "localhost"
    assert shipped.services["notebook"] == recipe.services["notebook"]
