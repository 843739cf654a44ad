"""The health report as one self-contained page, with the review loop.

Each near-duplicate group, outlier and likely label error is shown as thumbnails. Beside
each image a person picks keep, exclude, or relabel to a class; "Download manifest"
then saves ``path,label,split`` for every image of the cache with the relabels applied and
the excluded rows left out. Saved into the data root, ``pipeline extract review.csv
--cache CACHE`` applies it without extracting anything again. The choices live in the
page's script only: nothing is sent anywhere. A URL fragment ``#review=PATH|CLASS;PATH|-``
preselects choices (``-`` excludes), which is how the tests drive the page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

from pipeline.analysis import html_page
from pipeline.health import leakage, outliers

REVIEW_STYLE = """
.group { border-left: 4px solid #ccc; padding-left: 10px; margin-bottom: 14px; }
.group.leak { border-color: #c0392b; }
.review select { width: 100%; margin-top: 4px; }
#manifest { display: none; }
button { font-size: 1em; padding: 6px 14px; }
"""

SCRIPT = """
<script>
const DATA = JSON.parse(document.getElementById('dataset').textContent);
const choices = {};
function csvField(value) { return /[",\\n\\r]/.test(value) ? '"' + value.replace(/"/g, '""') + '"' : value; }
function manifest() {
  const lines = ['path,label,split'];
  DATA.rows.forEach(([path, label, split]) => {
    const choice = choices[path];
    if (choice === '-') return;
    lines.push([path, choice && choice !== '=' ? choice : label, split].map(csvField).join(','));
  });
  return lines.join('\\n') + '\\n';
}
function refresh() {
  const text = manifest();
  document.getElementById('manifest').textContent = text;
  const changed = Object.values(choices).filter(c => c !== '=').length;
  document.getElementById('changes').textContent = changed + ' change(s)';
}
function choose(path, value) {
  choices[path] = value;
  document.querySelectorAll('select[data-path]').forEach(s => { if (s.dataset.path === path) s.value = value; });
  refresh();
}
document.querySelectorAll('select[data-path]').forEach(s => s.addEventListener('change', () => choose(s.dataset.path, s.value)));
document.getElementById('download').addEventListener('click', () => {
  const blob = new Blob([manifest()], {type: 'text/csv'});
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob); link.download = 'review.csv'; link.click();
});
const preset = decodeURIComponent(location.hash).match(/^#review=(.*)$/);
if (preset) preset[1].split(';').filter(Boolean).forEach(item => {
  const cut = item.lastIndexOf('|'); choose(item.slice(0, cut), item.slice(cut + 1));
});
refresh();
</script>
"""


def review_card(result, i: int, lines: Sequence[str]) -> str:
    """An image card with the keep / exclude / relabel choice under it."""
    card = html_page.card_html(html_page.Card(result.paths[i], result.data_root / result.paths[i], lines))
    given = result.class_names[result.labels[i]]
    options = ['<option value="=">keep as ' + html.escape(given) + "</option>", '<option value="-">exclude</option>']
    options += [
        f'<option value="{html.escape(name, quote=True)}">relabel to {html.escape(name)}</option>'
        for name in result.class_names
        if name != given
    ]
    select = f'<select data-path="{html.escape(result.paths[i], quote=True)}">{"".join(options)}</select>'
    assert card.endswith("</div>")
    return card[: -len("</div>")] + f'<div class="review">{select}</div></div>'


def render(result, show: int) -> str:
    names = result.class_names
    sections = []
    groups_html = []
    leaking = result.leaking_groups
    counts = leakage.leak_counts(result.leaks, result.splits)
    for group in result.groups[:show]:
        leak = group in leaking
        cards = "".join(
            review_card(result, i, (f"label: {names[result.labels[i]]}", f"split: {result.splits[i] or '-'}")) for i in group
        )
        title = "across splits: leakage" if leak else "within one split"
        groups_html.append(f'<div class="group{" leak" if leak else ""}"><p>{len(group)} images, {title}</p><div class="cards">{cards}</div></div>')
    sections.append(
        (f"Near-duplicates: {len(result.pairs)} pairs in {len(result.groups)} groups ({len(leaking)} across splits; "
         f"{counts['val']} val and {counts['test']} test images have a near-duplicate in train, listed in leakage.csv)",
         "".join(groups_html) or "<p>none</p>")
    )
    outlier_cards = "".join(
        review_card(result, i, (f"label: {names[result.labels[i]]}", outliers.reason(result.outlier_scores, result.labels, names, i)))
        for i in result.outlier_rows[:show]
    )
    sections.append((f"Outliers: {len(result.outlier_rows)}, most isolated first", f'<div class="cards">{outlier_cards}</div>' if outlier_cards else "<p>none</p>"))
    suggested = result.suggested
    issue_cards = "".join(
        review_card(
            result, i,
            (f"given: {names[result.labels[i]]} ({result.self_confidence[i]:.1%})",
             f"suggested: {names[suggested[i]]} ({result.probabilities[i, suggested[i]]:.1%})"),
        )
        for i in result.issue_rows[:show]
    )
    sections.append((f"Likely label errors: {int(result.flagged.sum())}, least likely label first", f'<div class="cards">{issue_cards}</div>' if issue_cards else "<p>none</p>"))
    split_names = sorted({key for row in result.balance.values() for key in row if key != "all"})
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{row['all']}</td>" + "".join(f"<td>{row.get(s, 0)}</td>" for s in split_names) + "</tr>"
        for name, row in result.balance.items()
    )
    header = "".join(f"<th>{html.escape(s or '-')}</th>" for s in split_names)
    sections.append(("Class balance", f'<table class="metrics"><tr><th>class</th><th>all</th>{header}</tr>{rows}</table>'))
    controls = (
        '<p><button id="download">Download manifest (review.csv)</button> <span id="changes"></span></p>'
        f"<p>Save it into {html.escape(str(result.data_root))} and run "
        f"<code>python -m pipeline extract {html.escape(str(result.data_root))}/review.csv --cache {html.escape(str(result.cache))}</code>: "
        "relabels and exclusions apply without extracting again.</p>"
        '<pre id="manifest"></pre>'
    )
    sections.insert(0, ("Review", controls))
    dataset = {"rows": [[p, names[label], s] for p, label, s in zip(result.paths, result.labels.tolist(), result.stored_splits)]}
    page = html_page.render_page(f"Health of {result.cache.name}", _summary(result), sections)
    data = json.dumps(dataset, ensure_ascii=False).replace("</", "<\\/")
    extra = f'<style>{REVIEW_STYLE}</style><script type="application/json" id="dataset">{data}</script>{SCRIPT}'
    return page.replace("</body>", extra + "</body>")


def _summary(result) -> list[str]:
    from pipeline.analysis.audit import summary_lines

    return summary_lines(result)
