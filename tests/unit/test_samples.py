"""Issue 5, acceptance 3: samples of every kind in the four languages, with the right date
format and zone on a DST edge, kept in docs/samples/ (regenerated: `notifier templates samples`)."""

from pathlib import Path

import pytest

from notifier.rendering.environment import Renderer
from notifier.rendering.samples import render_samples
from notifier.settings import shipped_path

DOCS = Path(__file__).resolve().parents[2] / "docs" / "samples"
EXPECTED = {  # 07:30 UTC on 29 March 2026 is 09:30 in Berlin: summer time began at 02:00 that night
    "de": ("Sonntag, 29. März 2026", "09:30"),
    "it": ("domenica 29 marzo 2026", "09:30"),
    "ru": ("воскресенье, 29 марта 2026", "09:30"),
    "en": ("Sunday, March 29, 2026", "9:30 AM"),
}


@pytest.mark.parametrize("language", sorted(EXPECTED))
def test_R42_R45_samples_show_local_date_and_time_across_the_dst_change(language):
    text = render_samples(Renderer(shipped_path("templates")), language)
    date, time = EXPECTED[language]
    assert date in text and time in text
    assert "08:30" not in text and "10:30" not in text and "8:30 AM" not in text  # never the wrong offset
    assert (DOCS / f"{language}.md").read_text(encoding="utf-8") == text, "run `notifier templates samples`"
