"""Head selection: the thresholds at their edges."""
import pandas as pd
import pytest

from ctxlookup.selection import select_heads


def test_select_heads_thresholds_at_their_edges():
    rows = []
    # 4 prompts; head (0, h) active on h of them: fractions 0, .25, .5, .75, 1
    for pid in range(4):
        for h in range(5):
            rows.append(dict(layer=2, neuron=7, prompt_id=pid, head_layer=0, head=h, score=0.0, active=pid < h))
    sel = select_heads(pd.DataFrame(rows))
    assert sorted(sel["head"]) == [1, 2, 3]
    assert sel.set_index("head").active_fraction.to_dict() == {1: 0.25, 2: 0.5, 3: 0.75}
    assert (sel.n_prompts == 4).all()
    assert sorted(select_heads(pd.DataFrame(rows), low=0.5, high=1.0)["head"]) == [2, 3, 4]
    with pytest.raises(ValueError):
        select_heads(pd.DataFrame(rows), low=0.8, high=0.2)
