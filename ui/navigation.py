"""The app's one page list: ``app.py`` registers these pages in this order and the Compress page's
guided tour links to them by title, so a page is added, renamed or moved here once.

``url_path`` is the page's address (``/errors``) where it differs from its file's name: a renamed
file keeps its old address, so links and bookmarks keep working. ``ui.links`` keys each page's
link settings by its title: a new page adds its line to ``ui.links.PAGES`` too.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Page:
    file: str
    title: str
    icon: str
    url_path: str | None = None
    """None: Streamlit's, from the file's name."""
    default: bool = False


PAGES = (
    Page("pages/home.py", "Compress", ":material/compress:", default=True),
    Page("pages/spectra.py", "Spectra", ":material/ssid_chart:"),
    Page("pages/outliers.py", "Outliers", ":material/scatter_plot:"),
    Page("pages/error_budget.py", "Error budget", ":material/stacked_bar_chart:", url_path="errors"),
    Page("pages/walkthrough.py", "Walkthrough", ":material/school:"),
    Page("pages/heads.py", "Heads", ":material/grid_view:"),
    Page("pages/vit.py", "ViT attention", ":material/visibility:"),
    Page("pages/compare.py", "Compare", ":material/compare_arrows:"),
    Page("pages/calibration.py", "Calibration", ":material/tune:"),
    Page("pages/deploy.py", "Deploy", ":material/rocket_launch:"),
)


def page(title: str) -> Page:
    """The page called ``title`` (KeyError for none)."""
    for p in PAGES:
        if p.title == title:
            return p
    raise KeyError(title)
