"""The ``hatzoo`` command answers at once and teaches right: ``list`` without torch, and every example in
every ``--help`` runs as written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hatzoo.zoo import default_zoo


@pytest.mark.integration
def test_list_reads_the_cards_without_importing_torch_or_timm():
    code = (
        "import sys; from hatzoo.cli import main; main(['list']); "
        "print('torch' in sys.modules, 'timm' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    *listing, imported = done.stdout.strip().splitlines()
    assert imported == "False False"
    zoo = default_zoo()
    assert [line.split()[0] for line in listing] == zoo.list_models()
    card = zoo.get_card(zoo.list_models()[0])
    assert f"{card.hub.repo_id}@{card.hub.revision}" in listing[0]
