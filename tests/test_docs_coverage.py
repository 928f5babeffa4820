"""The demography and inference documents show what they promise, and their links resolve
(tests/test_doc_samples.py runs their blocks)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
PROMISED = {
    "demography.md": ("from_demes", "pt.jsfs(", "pt.sfs(", "jsfs_function", "pt.EpochModel",
                      "pt.quantile(", "gradient=True", "jax.value_and_grad"),
    "inference.md": ("pt.fit(", "pt.observed_sfs(", "block_bootstrap", "bootstraps=",
                     "read_spectrum", "write_spectrum", "folded=True", "loglik_function",
                     "gradient=True", "n_starts="),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PROMISED))
def test_the_document_shows_what_it_promises(name):
    text = (DOCS / name).read_text(encoding="utf-8")
    code = "\n".join(BLOCK.findall(text))
    for needle in PROMISED[name]:
        assert needle in code, needle
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in link:
            assert (DOCS / link).exists(), link
