"""The app's one page list (ui/navigation.py): app.py, the guided tour and the deep links read it."""

from __future__ import annotations

import ast
from pathlib import Path

from streamlit.testing.v1 import AppTest

from ui import links, navigation

ROOT = Path(__file__).resolve().parents[1]


def test_every_page_has_a_file_and_a_links_entry():
    titles = [p.title for p in navigation.PAGES]
    assert len(set(titles)) == len(titles) and sum(p.default for p in navigation.PAGES) == 1
    assert all((ROOT / p.file).is_file() for p in navigation.PAGES)
    assert set(links.PAGES) == set(titles)  # the deep links know every page, and no other


def test_the_error_budget_page_keeps_its_address():
    """pages/errors.py became pages/error_budget.py (beside oats/errors.py it read as the
    exceptions); its URL stays /errors, so links and bookmarks keep working."""
    page = navigation.page("Error budget")
    assert page.file == "pages/error_budget.py" and page.url_path == "errors"


def test_the_tour_names_pages_of_the_list():
    """The tour (pages/home.py, a page script) holds only titles: file and icon come from the list,
    so a renamed page cannot leave the tour with a dead link."""
    tree = ast.parse((ROOT / "pages" / "home.py").read_text())
    tour = next(n.value for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "TOUR")
    titles = [ast.literal_eval(e.elts[0]) for e in tour.elts]
    assert titles and all(len(e.elts) == 2 for e in tour.elts)
    assert set(titles) <= {p.title for p in navigation.PAGES}
    assert titles[0] == next(p.title for p in navigation.PAGES if p.default)


def test_app_opens_the_renamed_page_from_the_list():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    assert not at.exception
    at.switch_page("pages/error_budget.py").run()
    assert not at.exception and [t.value for t in at.title] == ["Error budget"]
