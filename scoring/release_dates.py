"""Public release dates of the model generations the registry knows.

``fit effects --generation-scale date`` puts generations on a time axis, so
the registry fills ``models.release_date`` for models it recognises.  The
dates below are the public announcement / first hub upload of each
generation, taken from the model cards, release blog posts and technical
reports of the vendors (Qwen blog and GitHub releases, Meta AI blog posts,
AI2 OLMo announcements, Hugging Face SmolLM posts, Google Gemma blog, Mistral
and Microsoft Phi announcements), written down from those public sources in
November 2026.  **Month precision** is what is claimed: the day is given where
it is well known, but a size released a few weeks after the rest of its
generation gets the generation's date.  Releases inside a generation that came
clearly later (Qwen2.5-VL, QwQ-32B, Qwen3 "2507", OLMo 2 32B, ...) have a
name rule of their own.  ``psystats models set NAME release_date=YYYY-MM-DD``
corrects or adds any date.
"""

from __future__ import annotations

import re
from datetime import date

# (family, generation) -> date of the generation's first public release.
GENERATION_DATES: dict[tuple[str, str], str] = {
    ("qwen", "1"): "2023-08-03",  # Qwen-7B; 14B in Sep, 1.8B/72B in Nov 2023
    ("qwen", "1.5"): "2024-02-05",
    ("qwen", "2"): "2024-06-07",
    ("qwen", "2.5"): "2024-09-19",
    ("qwen", "3"): "2025-04-29",
    ("llama", "1"): "2023-02-24",
    ("llama", "2"): "2023-07-18",
    ("llama", "3"): "2024-04-18",
    ("llama", "3.1"): "2024-07-23",
    ("llama", "3.2"): "2024-09-25",  # 1B/3B text and 11B/90B vision
    ("llama", "3.3"): "2024-12-06",
    ("llama", "4"): "2025-04-05",
    ("olmo", "1"): "2024-02-01",
    ("olmo", "1.7"): "2024-04-17",
    ("olmo", "2"): "2024-11-26",  # 7B/13B; 32B and 1B have rules below
    ("olmo", "3"): "2025-11-20",
    ("smollm", "1"): "2024-07-16",
    ("smollm", "2"): "2024-11-01",
    ("smollm", "3"): "2025-07-08",
    ("gemma", "1"): "2024-02-21",
    ("gemma", "1.1"): "2024-04-05",
    ("gemma", "2"): "2024-06-27",
    ("gemma", "3"): "2025-03-12",
    ("mistral", "0.1"): "2023-09-27",
    ("mistral", "0.2"): "2023-12-11",
    ("mistral", "0.3"): "2024-05-22",
    ("phi", "1"): "2023-06-20",
    ("phi", "1.5"): "2023-09-11",
    ("phi", "2"): "2023-12-12",
    ("phi", "3"): "2024-04-23",
    ("phi", "3.5"): "2024-08-20",
    ("phi", "4"): "2024-12-12",
    ("gpt2", "2"): "2019-02-14",
    ("falcon", "2"): "2024-05-13",
    ("falcon", "3"): "2024-12-17",
}

# Releases inside a generation that came clearly later than its first models:
# (family, pattern on the lowercase repository name, date, what).  First match wins.
NAME_RULES: tuple[tuple[str, str, str, str], ...] = (
    ("qwen", r"^codeqwen1\.5", "2024-04-16", "CodeQwen1.5"),
    ("qwen", r"^qwen2-vl", "2024-08-29", "Qwen2-VL"),
    ("qwen", r"^qwen2-math", "2024-08-08", "Qwen2-Math"),
    ("qwen", r"^qwen2\.5-vl", "2025-01-28", "Qwen2.5-VL"),
    ("qwen", r"^qwen2\.5-coder-(?:0\.5|3|14|32)b", "2024-11-12", "Qwen2.5-Coder 0.5/3/14/32B"),
    ("qwen", r"^qwq-32b-preview", "2024-11-28", "QwQ-32B-Preview"),
    ("qwen", r"^qwq", "2025-03-06", "QwQ-32B"),
    ("qwen", r"^qwen3-coder", "2025-07-22", "Qwen3-Coder"),
    ("qwen", r"^qwen3-vl", "2025-09-23", "Qwen3-VL"),
    ("qwen", r"^qwen3-next", "2025-09-11", "Qwen3-Next"),
    ("qwen", r"^qwen3-.*-2507", "2025-07-21", "Qwen3 2507 update"),
    ("llama", r"codellama", "2023-08-24", "Code Llama"),
    ("olmo", r"^olmo-2-0325", "2025-03-13", "OLMo 2 32B (0325)"),
    ("olmo", r"^olmo-2-0425", "2025-05-01", "OLMo 2 1B (0425)"),
    ("olmo", r"^olmoe", "2024-09-03", "OLMoE"),
)


def parse_date(value: object) -> date:
    """A release date from ``date``/``datetime``, ``YYYY-MM-DD`` or ``YYYY-MM`` (day 1).

    Raises ValueError for anything else (the caller names the field).
    """
    from datetime import datetime

    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    if re.fullmatch(r"\d{4}-\d{2}", text):
        text += "-01"  # month precision
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise ValueError(text)
    return date.fromisoformat(text)


def known_release_date(
    name: str | None, family: str | None, generation: str | None
) -> tuple[date, str] | None:
    """(release date, why) for a model the table knows, else None.

    ``name`` is a hub id, folder name or file stem: only the part after the
    last '/' is read.  A name rule of the family wins over its generation's date.
    """
    if family is None:
        return None
    repo = (name or "").rpartition("/")[2].lower()
    for fam, pattern, day, what in NAME_RULES:
        if fam == family and re.search(pattern, repo):
            return (
                date.fromisoformat(day),
                f"{what} released {day[:7]} (registry table, scoring/release_dates.py)",
            )
    first = GENERATION_DATES.get((family, generation or ""))
    if first is None:
        return None
    return (
        date.fromisoformat(first),
        f"{family} {generation} first released {first[:7]} (registry table, "
        "scoring/release_dates.py)",
    )


NO_RELEASE_DATE = (
    "not in the registry's table of release dates (scoring/release_dates.py); "
    "set it with `psystats models set NAME release_date=YYYY-MM-DD`"
)


def release_date_for(
    name: str | None, family: str | None, generation: str | None
) -> tuple[date | None, str]:
    """(release date or None, why): :func:`known_release_date`, or None with how to set one."""
    known = known_release_date(name, family, generation)
    return known if known else (None, NO_RELEASE_DATE)
