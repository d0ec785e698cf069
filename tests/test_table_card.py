"""A table's card: judged with the table's own gate thresholds, real rows beside generated ones (sampled), a chart per
column, and condition values escaped; published through real SeaweedFS."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gan_core import registry
from gan_core.config import parse_params
from gan_core.layout import Layout
from tests.helpers import use_aws_env
from tests.test_tables_pipeline import hostile_table, table_params

# The condition column's values as a user's data may spell them: Markdown and HTML in them stays text.
HOSTILE = {"Adélie": "Adélie", "Gentoo": "Gen|too <b>x</b>", "Chin strap": "Chin *strap* [a](b)"}


@pytest.fixture(scope="module")
def table_card(tmp_path_factory, s3_server):
    """The hostile table prepared, trained (tiny), evaluated, generated and published with its card."""
    from gan_core.stages.evaluate import run_evaluate
    from gan_core.stages.generate import run_generate, run_publish
    from gan_core.stages.prepare import run_prepare
    from gan_core.stages.train import run_train

    layout = Layout(tmp_path_factory.mktemp("table-card"))
    layout.raw.mkdir(parents=True)
    frame = hostile_table()
    frame["species"] = frame["species"].map(HOSTILE)
    frame.to_parquet(layout.raw / "hostile.parquet", index=False)
    raw = table_params("table-card")
    raw["prepare"]["source"] = str(layout.raw / "hostile.parquet")
    raw["generate"]["class_counts"] = {HOSTILE[k]: v for k, v in raw["generate"]["class_counts"].items()}
    params = parse_params(raw)
    run_prepare(params, layout)
    run_train(params, layout, progress=False)
    run_evaluate(params, layout)
    summary = run_generate(params, layout.generated(params), layout)
    with pytest.MonkeyPatch.context() as patch:  # the test server's AWS environment, as s3_env sets it
        use_aws_env(patch, layout.root, s3_server.env())
        run_publish(params, summary, "v1", s3_server.bucket, layout)
    card = layout.generated(params) / "_card"
    return params, layout, (card / "README.md").read_text(), (card / "report.html").read_text()


def test_a_table_is_judged_with_table_thresholds(table_card):
    params, layout, readme, page = table_card
    metrics = json.loads(layout.metrics.read_text())
    gated = registry.check_gate(metrics, params.gate)
    verdict = readme[readme.index("## Verdict"):readme.index("synthetic rows generated")]
    assert f"**This model {'passed' if gated.passed else 'missed'} the quality gate" in verdict
    for metric, key in [("utility", "utility_min"), ("quality", "quality_min"), ("dcr_ratio", "dcr_ratio_min")]:
        goal = f">= {getattr(params.gate, key):g}"  # the thresholds these params set, whatever they are
        assert f"| {metrics[metric]:.4g} | {goal} (gate.{key}) |" in verdict
    assert "fd_ratio" not in verdict and "label_consistency" not in verdict and ">= 0.97" not in readme
    banner = page[page.index("<section class='verdict"):page.index("</section>")]
    assert re.findall(r"<b>(\w+)</b>", banner) == ["utility", "quality", "dcr_ratio"]
    assert f"verdict {'passed' if gated.passed else 'missed'}'" in banner


def test_a_tables_report_shows_sampled_real_rows_beside_generated_and_a_chart_per_column(table_card):
    from gan_core.tables.card import SHOWN_ROWS
    from gan_core.tables.data import load_prepared_table

    params, layout, _, page = table_card
    test = load_prepared_table(layout.prepared(params)).test
    order = [page.index("<section class='verdict"), page.index("<h3>real (test split)</h3>"),
             page.index("<h3>generated</h3>"), page.index("<svg"), page.index("<details>")]
    assert order == sorted(order)
    real = page[order[1]:order[2]]
    # the second cell of each row: "body mass (g)", a value nearly unique per row
    shown = [cell for cell in re.findall(r"<tr>\s*<td>[^<]*</td>\s*<td>([^<]*)</td>", real)]
    assert len(shown) == SHOWN_ROWS
    known = {f"{v}" for v in test["body mass (g)"].dropna()} | {"(missing)"}
    assert set(shown) <= known  # rows of the test split ...
    first = [f"{v}" if v == v else "(missing)" for v in test["body mass (g)"].head(SHOWN_ROWS)]
    assert shown != first  # ... sampled, not its first rows
    generated = page[order[2]:order[3]]
    assert len(re.findall(r"<tr>\s*<td>", generated)) == SHOWN_ROWS
    charts = page[order[3]:order[4]]
    assert charts.count("<svg") == len(test.columns) == 9  # one per column, every kind here is charted
    assert all(f">{name}" in charts for name in ("species (categorical)", "seen (datetime)", "male (boolean)"))
    assert np.isfinite([float(v) for v in re.findall(r"height='([\d.]+)' fill", charts)]).all()


def test_condition_values_are_escaped_in_the_readme_and_the_report(table_card):
    from markdown_it import MarkdownIt

    _, _, readme, page = table_card
    body = readme.split("\n---\n", 1)[1]
    tokens = MarkdownIt("commonmark").enable("table").parse(body)
    inline = [child for token in tokens if token.children for child in token.children]
    assert not [t for t in tokens + inline if t.type.startswith("html") or t.type in ("link_open", "em_open")]
    line = next(t for t in tokens if t.type == "inline" and t.content.startswith("Rows per value of"))
    text = "".join(child.content for child in line.children if child.type in ("text", "code_inline"))
    assert text.startswith("Rows per value of species: ") and text.endswith(".")  # each value reads as written:
    assert sorted(text.removeprefix("Rows per value of species: ")[:-1].split(", ")) == sorted(
        ["Adélie: 60", f"{HOSTILE['Gentoo']}: 40", f"{HOSTILE['Chin strap']}: 20"])
    assert "<b>x</b>" not in page and "Gen|too &lt;b&gt;x&lt;/b&gt;" in page and "<script" not in page.lower()
