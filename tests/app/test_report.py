import re

import numpy as np
from PIL import Image

from saga.app.report import AttentionExample, JudgeSample, RetrievalRow, _heatmap, write_report


def _img(colour):
    return Image.new("RGB", (32, 32), colour)


def test_report_has_every_section_and_marks_the_best(tmp_path):
    table = {"Proxy Anchor": {"R@1": 0.5, "R@2": 0.6, "R@4": 0.7, "R@8": 0.8, "NMI": 0.4},
             "SAGA": {"R@1": 0.625, "R@2": 0.7, "R@4": 0.75, "R@8": 0.9, "NMI": 0.3}}
    curves = {"SAGA": [{"step": 0, "loss": 2.0, "reward_mean": 0.5}, {"step": 10, "loss": 1.0, "reward_mean": 0.7}]}
    att = [AttentionExample(_img("white"), (2, 2), np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.4, 0.3, 0.2, 0.1]),
                            title="class 101")]
    ret = [RetrievalRow(_img("red"), "042.Red_Body", [(_img("red"), "042.Red_Body", True),
                                                      (_img("blue"), "043.Blue_Body", False)])]
    path = write_report(tmp_path / "r" / "report.html", title="demo", table=table, curves=curves,
                        attention=att, retrieval=ret, stds={"SAGA": {"R@1": 0.01}})
    doc = path.read_text()
    for heading in ("Zero-shot retrieval", "Recall@K", "Training curves", "Attention", "Retrieval"):
        assert heading in doc
    assert "<td><b>62.5 &plusmn; 1.0</b></td>" in doc  # best R@1 in bold, with its std
    assert "<td><b>40.0</b></td>" in doc  # best NMI is the other row's
    assert doc.count("&#10003;") == 1 and doc.count("&#10007;") == 1
    # neighbours are captioned by class id (long names would push the row off the page), full name on hover
    assert "&#10003; 042</small>" in doc and "&#10007; 043</small>" in doc and "title='043.Blue_Body'" in doc
    # figures are inlined: no file next to the report is needed
    assert len(re.findall(r'src="data:image/png;base64,', doc)) >= 2 + 3 + 3
    assert list((tmp_path / "r").iterdir()) == [path]


def test_heatmap_puts_weight_where_the_token_is():
    # token 1 of a 2x2 grid = top-right window: that quadrant turns red, the others stay white
    heat = np.asarray(_heatmap(_img("white"), np.array([0.0, 1.0, 0.0, 0.0]), (2, 2), size=20))
    r, g, b = heat[2, 17]  # 60% red over white: 255 * 0.4 = 102, up to PIL's rounding
    assert r == 255 and abs(int(g) - 102) <= 1 and g == b
    assert tuple(heat[2, 2]) == (255, 255, 255)
    assert tuple(heat[17, 17]) == (255, 255, 255)


def test_report_shows_what_the_judge_wrote_with_its_verdict_and_reward(tmp_path):
    samples = [JudgeSample(25, _img("red"), _img("red"), True, "crest: tall / tall match\nAnswer: same", True, 1.0,
                           "042.A / 042.A"),
               JudgeSample(200, _img("red"), _img("blue"), False, "crest: <tall> / none mismatch", None, 0.0,
                           "042.A / 043.B")]
    doc = write_report(tmp_path / "report.html", title="t", table={"SAGA": {"R@1": 0.5}}, judge_samples=samples,
                       judge_source="SAGA, seed 0").read_text()
    assert "What the judge wrote" in doc and "SAGA, seed 0" in doc
    assert doc.index("<h3>step 25</h3>") < doc.index("<h3>step 200</h3>")
    assert "<pre>crest: tall / tall match\nAnswer: same</pre>" in doc
    assert "<pre>crest: &lt;tall&gt; / none mismatch</pre>" in doc  # the judge's text is escaped
    assert "verdict: same</span>; reward 1" in doc and "verdict: none</span>; reward 0" in doc
    assert "truth: same class" in doc and "truth: different classes" in doc and "042.A / 043.B" in doc
    assert "No logged completions" in write_report(tmp_path / "empty.html", title="t",
                                                  table={"SAGA": {"R@1": 0.5}}).read_text()
