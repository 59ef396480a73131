"""Each page of the app in headless Chromium: it renders, and shows no Streamlit error."""

import shutil

import pytest

from tests.appdriver import chromium, render, serve

PAGES = ("Overview", "Feature", "Analogy", "Lobes", "Crystals", "Galaxy", "Universality",
         "Absorption", "Explanations", "SQL")

needs_chromium = pytest.mark.skipif(
    chromium() is None or shutil.which("chromedriver") is None,
    reason="Chromium/chromedriver are not installed here (scripts/test.sh installs the Debian "
           "packages chromium and chromium-driver where apt-get can)")


@needs_chromium
def test_every_page_renders_without_an_error(full_atlas, tmp_path):
    with serve(full_atlas) as url:
        for page in PAGES:
            png = tmp_path / f"{page}.png"
            dom = render(f"{url}/?page={page}", png=png, wait_for=page)
            assert 'data-testid="stApp"' in dom, f"{page}: the app did not render"
            assert 'data-testid="stException"' not in dom, f"{page}: a stack trace is shown"
            assert "stAlertContentError" not in dom, f"{page}: an error message is shown"
            assert png.exists() and png.stat().st_size > 10_000, f"{page}: blank screenshot"


def test_every_page_of_the_app_is_covered():
    """The core pages and one page per analysis (its folder's page.py), found by the app."""
    import ast
    from pathlib import Path

    from atlas import analyses

    src = (Path(__file__).parent.parent / "app" / "streamlit_app.py").read_text()
    node = next(n for n in ast.parse(src).body if isinstance(n, ast.Assign)
                and getattr(n.targets[0], "id", "") == "CORE")
    core = [k.value for k in node.value.keys]
    assert set([*core, *(p.TITLE for p in analyses.pages()), "SQL"]) == set(PAGES)


@needs_chromium
def test_a_feature_opens_by_url_with_its_logit_table_and_histogram(tiny_atlas, tmp_path):
    from urllib.parse import quote

    sae = tiny_atlas[1].sae_ids[0]
    with serve(tiny_atlas[0].db) as url:
        png = tmp_path / "feature.png"
        dom = render(f"{url}/?page=Feature&sae={quote(sae, safe='')}&feature=5", png=png,
                     wait_for="Activation histogram")
    assert "#5 ·" in dom, "the page did not open feature 5"
    assert "Logit lens" in dom and "Promoted tokens" in dom and "Suppressed tokens" in dom
    assert dom.count('data-testid="stDataFrame"') >= 2          # the two logit tables
    assert dom.count("vega-embed") >= 2                         # activation and density charts
    assert 'data-testid="stException"' not in dom and "stAlertContentError" not in dom
